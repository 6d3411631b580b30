import Foundation

/// A dense Float64 matrix, row-major [rows, cols], with the two small factorizations that
/// re-factor a sum of LoRA products (AdapterCombination): a thin Householder QR and a
/// one-sided Jacobi SVD. Both are plain loops meant for [out, R] and [R, R] with R a few
/// dozen, not for a whole weight.
public struct Matrix64: Equatable, Sendable {
    public let rows: Int
    public let cols: Int
    public var values: [Double]

    public init(rows: Int, cols: Int, values: [Double]? = nil) {
        precondition(values == nil || values!.count == rows * cols, "Matrix64: \(values!.count) values for [\(rows), \(cols)]")
        self.rows = rows
        self.cols = cols
        self.values = values ?? [Double](repeating: 0, count: rows * cols)
    }

    public subscript(i: Int, j: Int) -> Double {
        get { values[i * cols + j] }
        set { values[i * cols + j] = newValue }
    }

    public var transposed: Matrix64 {
        var t = Matrix64(rows: cols, cols: rows)
        for i in 0..<rows { for j in 0..<cols { t[j, i] = self[i, j] } }
        return t
    }

    /// self[m, k] · other[k, n].
    public func multiplied(by other: Matrix64) -> Matrix64 {
        precondition(cols == other.rows, "Matrix64: [\(rows), \(cols)] · [\(other.rows), \(other.cols)]")
        var c = Matrix64(rows: rows, cols: other.cols)
        values.withUnsafeBufferPointer { a in
            other.values.withUnsafeBufferPointer { b in
                c.values.withUnsafeMutableBufferPointer { c in
                    for i in 0..<rows {
                        for k in 0..<cols where a[i * cols + k] != 0 {
                            let aik = a[i * cols + k]
                            for j in 0..<other.cols { c[i * other.cols + j] += aik * b[k * other.cols + j] }
                        }
                    }
                }
            }
        }
        return c
    }

    /// √(Σ x²).
    public var frobeniusNorm: Double { values.reduce(0) { $0 + $1 * $1 }.squareRoot() }

    /// self[m, n] = Q[m, k]·R[k, n], k = min(m, n): Q with orthonormal columns, R upper
    /// triangular. Householder reflections, so a rank-deficient matrix (a zero B) is fine:
    /// R then has zero rows and Q is still orthonormal.
    public func householderQR() -> (q: Matrix64, r: Matrix64) {
        let m = rows, n = cols, k = min(m, n)
        var a = transposed.values                    // column-major [m, n]: column j at a[j*m ..< (j+1)*m]
        var reflectors: [[Double]] = []              // v_j over rows j ..< m, ‖v_j‖ = 1 (or all zero)
        for j in 0..<k {
            var v = Array(a[(j * m + j)..<(j * m + m)])
            let norm = v.reduce(0) { $0 + $1 * $1 }.squareRoot()
            if norm == 0 { reflectors.append(v); continue }
            v[0] += v[0] < 0 ? -norm : norm            // v = x + sign(x₀)‖x‖e₀: no cancellation
            let vn = v.reduce(0) { $0 + $1 * $1 }.squareRoot()
            for i in v.indices { v[i] /= vn }
            for c in j..<n {                           // a[j..., c] -= 2 v (vᵀ a[j..., c])
                var d = 0.0
                for i in v.indices { d += v[i] * a[c * m + j + i] }
                for i in v.indices { a[c * m + j + i] -= 2 * d * v[i] }
            }
            reflectors.append(v)
        }
        var r = Matrix64(rows: k, cols: n)
        for i in 0..<k { for j in i..<n { r[i, j] = a[j * m + i] } }
        var q = [Double](repeating: 0, count: m * k)  // column-major [m, k]: H_0 ⋯ H_{k-1} applied to I[:, :k]
        for c in 0..<k { q[c * m + c] = 1 }
        for j in stride(from: k - 1, through: 0, by: -1) {
            let v = reflectors[j]
            for c in 0..<k {
                var d = 0.0
                for i in v.indices { d += v[i] * q[c * m + j + i] }
                if d != 0 { for i in v.indices { q[c * m + j + i] -= 2 * d * v[i] } }
            }
        }
        return (Matrix64(rows: k, cols: m, values: q).transposed, r)
    }

    /// self[m, n] = U[m, k]·diag(σ)·V[n, k]ᵀ, k = min(m, n), σ descending and ≥ 0, by one-sided
    /// Jacobi (Hestenes): plane rotations of the columns until every pair is orthogonal to
    /// Float64 precision; then σ_j = ‖column j‖, U's columns the normalized columns (zero where
    /// σ_j = 0), V the product of the rotations.
    public func jacobiSVD() -> (u: Matrix64, sigma: [Double], v: Matrix64) {
        if rows < cols {
            let t = transposed.jacobiSVD()
            return (t.v, t.sigma, t.u)
        }
        let m = rows, n = cols
        var w = transposed.values                    // column-major [m, n]
        var v = [Double](repeating: 0, count: n * n) // column-major [n, n]
        for j in 0..<n { v[j * n + j] = 1 }
        for _ in 0..<80 {
            var rotated = false
            for p in 0..<n {
                for q in (p + 1)..<n {
                    var alpha = 0.0, beta = 0.0, gamma = 0.0
                    for i in 0..<m {
                        let x = w[p * m + i], y = w[q * m + i]
                        alpha += x * x; beta += y * y; gamma += x * y
                    }
                    guard gamma != 0, abs(gamma) > 1e-15 * (alpha * beta).squareRoot() else { continue }
                    rotated = true
                    let zeta = (beta - alpha) / (2 * gamma)
                    let t = (zeta >= 0 ? 1.0 : -1.0) / (abs(zeta) + (1 + zeta * zeta).squareRoot())
                    let c = 1 / (1 + t * t).squareRoot(), s = c * t
                    for i in 0..<m {
                        let x = w[p * m + i], y = w[q * m + i]
                        w[p * m + i] = c * x - s * y
                        w[q * m + i] = s * x + c * y
                    }
                    for i in 0..<n {
                        let x = v[p * n + i], y = v[q * n + i]
                        v[p * n + i] = c * x - s * y
                        v[q * n + i] = s * x + c * y
                    }
                }
            }
            if !rotated { break }
        }
        let norms = (0..<n).map { j in (0..<m).reduce(0.0) { $0 + w[j * m + $1] * w[j * m + $1] }.squareRoot() }
        let order = (0..<n).sorted { norms[$0] > norms[$1] || (norms[$0] == norms[$1] && $0 < $1) }
        var u = Matrix64(rows: m, cols: n), vOut = Matrix64(rows: n, cols: n)
        for (k, j) in order.enumerated() {
            let s = norms[j]
            if s > 0 { for i in 0..<m { u[i, k] = w[j * m + i] / s } }
            for i in 0..<n { vOut[i, k] = v[j * n + i] }
        }
        return (u, order.map { norms[$0] }, vOut)
    }
}

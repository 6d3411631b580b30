import Foundation
import QuantKernels

/// MPI, loaded at run time (Sources/QuantKernels/mpi_shim.c: dlopen of Open MPI's libmpi.so.40
/// or MPICH's libmpich.so.12), for data-parallel training across processes and machines.
/// Building and running qlora without MPI needs nothing: a process is under MPI only when a
/// launcher started it, which its environment says (`launchedSize`).
///
///   mpirun -np 2 --bind-to none -x OMP_NUM_THREADS=1 qlora info     # rank, size, threads per rank
///
/// Open MPI binds each rank to one core by default, so OpenMP then sees one CPU: pass
/// `--bind-to none` (or `--map-by ppr:1:node:PE=<cores>`) and `-x OMP_NUM_THREADS`. MPI calls
/// stay on the thread that started MPI (MPI_THREAD_FUNNELED).
public enum MPIWorld {
    public struct Process: Sendable, Equatable {
        public let rank: Int
        public let size: Int
        /// "Open MPI" or "MPICH", and the library loaded.
        public let flavor: String
        public let library: String
    }

    public enum Failure: Error, CustomStringConvertible {
        case cannotStart(String)
        case call(String, Int32)

        public var description: String {
            switch self {
            case let .cannotStart(why): "under mpirun (\(MPIWorld.launcherVariable ?? "?") is set) but MPI cannot start: \(why)"
            case let .call(name, rc): "\(name) failed with MPI error \(rc)"
            }
        }
    }

    /// The world size the launcher announced (Open MPI's OMPI_COMM_WORLD_SIZE, Hydra's and
    /// Slurm's PMI_SIZE), or nil when no launcher started this process.
    public static var launchedSize: Int? {
        let env = ProcessInfo.processInfo.environment
        return (env["OMPI_COMM_WORLD_SIZE"] ?? env["PMI_SIZE"]).flatMap(Int.init)
    }

    static var launcherVariable: String? {
        let env = ProcessInfo.processInfo.environment
        return env["OMPI_COMM_WORLD_SIZE"] != nil ? "OMPI_COMM_WORLD_SIZE" : env["PMI_SIZE"] != nil ? "PMI_SIZE" : nil
    }

    /// Starts MPI (once) when a launcher started this process; nil otherwise. Under a launcher
    /// without a loadable MPI library it throws: N independent runs would each train alone.
    public static func start() throws -> Process? {
        guard launchedSize != nil else { return nil }
        var err = [CChar](repeating: 0, count: 1024)
        guard qk_mpi_init(&err, err.count) == 0 else { throw Failure.cannotStart(String(cString: err)) }
        let p = Process(rank: Int(qk_mpi_rank()), size: Int(qk_mpi_size()), flavor: String(cString: qk_mpi_flavor()),
                        library: String(cString: qk_mpi_library()))
        if let launched = launchedSize, launched != p.size {
            // Each rank alone in a world of one: the library is not the launcher's MPI.
            throw Failure.cannotStart("the launcher started \(launched) ranks but \(p.library) (\(p.flavor)) sees a world of \(p.size): "
                                      + "the launcher and the library are different MPIs\n---> HINT: use the launcher of the MPI loaded "
                                      + "(Open MPI: mpirun; MPICH: mpiexec.hydra / mpiexec.mpich), or name the library with QLORA_MPI_LIBRARY=/path/libmpi.so…")
        }
        return p
    }

    /// x ← the sum of every rank's x, in place, on every rank.
    public static func allReduceSum(_ x: UnsafeMutableBufferPointer<Float>) throws {
        let rc = qk_mpi_allreduce_sum_f32(x.baseAddress, Int64(x.count))
        guard rc == 0 else { throw Failure.call("MPI_Allreduce", rc) }
    }

    public static func allReduceSum(_ x: UnsafeMutableBufferPointer<Double>) throws {
        let rc = qk_mpi_allreduce_sum_f64(x.baseAddress, Int64(x.count))
        guard rc == 0 else { throw Failure.call("MPI_Allreduce", rc) }
    }

    /// A check of the collective this process group will train with: every rank contributes
    /// values that depend on its rank, and each checks the sums against their closed form.
    /// Returns a line for people; throws when a sum is wrong.
    public static func selfCheck(_ p: Process) throws -> String {
        let n = 1 << 16
        var f = (0..<n).map { Float(p.rank + 1) * Float($0 % 97) }
        var d = (0..<n).map { Double(p.rank + 1) + Double($0) * 1e-3 }
        try f.withUnsafeMutableBufferPointer { try allReduceSum($0) }
        try d.withUnsafeMutableBufferPointer { try allReduceSum($0) }
        let ranks = Double(p.size * (p.size + 1) / 2)
        for i in 0..<n {
            let wantF = Float(ranks) * Float(i % 97), wantD = ranks + Double(p.size) * Double(i) * 1e-3
            guard f[i] == wantF, abs(d[i] - wantD) <= 1e-9 * abs(wantD) else {
                throw Failure.call("MPI_Allreduce check at element \(i): \(f[i]) vs \(wantF), \(d[i]) vs \(wantD)", -2)
            }
        }
        return "mpi: rank \(p.rank) of \(p.size) (\(p.flavor), \(p.library)); all-reduce of \(2 * n) values checked"
    }

    /// Returns when every rank has called it.
    public static func barrier() throws {
        let rc = qk_mpi_barrier()
        guard rc == 0 else { throw Failure.call("MPI_Barrier", rc) }
    }

    public static func finish() { _ = qk_mpi_finalize() }
}

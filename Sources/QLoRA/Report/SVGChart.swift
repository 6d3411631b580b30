import Foundation

/// One curve of a chart panel: points in data coordinates, drawn as a polyline (and a dot at
/// each point with `markers`, which a lone point always gets).
public struct ChartSeries: Sendable {
    public enum Stroke: Sendable { case solid, dashed, dotted, faint }

    public var label: String
    public var points: [(x: Double, y: Double)]
    /// An SVG colour (#1f77b4).
    public var color: String
    public var stroke: Stroke
    public var markers: Bool
    /// Whether the panel's legend names it (a raw curve under its smoothed one need not).
    public var inLegend: Bool

    public init(label: String, points: [(x: Double, y: Double)], color: String, stroke: Stroke = .solid, markers: Bool = false,
                inLegend: Bool = true) {
        self.label = label
        self.points = points.filter { $0.x.isFinite && $0.y.isFinite }
        self.color = color
        self.stroke = stroke
        self.markers = markers
        self.inLegend = inLegend
    }
}

/// A plot with its own axes: a title above, ticks on both axes, the legend below.
public struct ChartPanel: Sendable {
    public var title: String
    public var series: [ChartSeries]

    public init(title: String, series: [ChartSeries]) {
        self.title = title
        self.series = series
    }
}

/// Line charts written as SVG 1.1 by hand (no dependency): panels on a grid of `columns`,
/// each with nice ticks (1, 2 or 5 × 10ᵏ), grid lines and a legend. Every curve is a
/// `<polyline class="series" data-panel="…" data-label="…">`, so a test (or a script) finds
/// what was drawn without reading pixels.
///
/// Layout of a panel, in pixels (`Layout`): the plot area inset by `left` (y tick labels),
/// `top` (title), `right` and `bottom` (x tick labels and the x axis' name), then legend rows.
public enum SVGChart {
    struct Layout {
        static let panelWidth = 540.0, plotHeight = 220.0
        static let left = 64.0, right = 18.0, top = 30.0, bottom = 42.0
        static let legendRow = 16.0, titleHeight = 34.0, fontSize = 11.0
        /// What a character of the 11 px sans-serif is taken to need, to flow the legend.
        static let charWidth = 6.2
    }

    /// The whole chart: `title` on top, then the panels, `columns` a row, all on one x axis.
    public static func render(title: String, panels: [ChartPanel], xLabel: String = "update", columns: Int = 2) -> String {
        typealias L = Layout
        let columns = max(1, min(columns, panels.count))
        let legends = panels.map { legendRows($0, width: L.panelWidth - L.left - L.right) }
        let rows = stride(from: 0, to: panels.count, by: columns).map { Array($0..<min($0 + columns, panels.count)) }
        let rowHeights = rows.map { row in L.top + L.plotHeight + L.bottom + (row.map { Double(legends[$0].count) }.max() ?? 0) * L.legendRow + 8 }
        let xValues = panels.flatMap { $0.series.flatMap { $0.points.map(\.x) } }
        let xs = xValues.isEmpty ? nil : Axis(xValues, integers: true)
        let width = L.panelWidth * Double(columns), height = L.titleHeight + rowHeights.reduce(0, +)
        var svg = """
            <?xml version="1.0" encoding="UTF-8"?>
            <svg xmlns="http://www.w3.org/2000/svg" version="1.1" width="\(fmt(width))" height="\(fmt(height))" \
            viewBox="0 0 \(fmt(width)) \(fmt(height))" font-family="DejaVu Sans, Helvetica, Arial, sans-serif" font-size="\(fmt(L.fontSize))">
            <rect x="0" y="0" width="\(fmt(width))" height="\(fmt(height))" fill="#ffffff"/>
            <text x="12" y="22" font-size="15" font-weight="bold">\(escape(title))</text>

            """
        var y = L.titleHeight
        for (r, row) in rows.enumerated() {
            for (c, p) in row.enumerated() {
                svg += panel(panels[p], legend: legends[p], x: Double(c) * L.panelWidth, y: y, xAxis: xs, xLabel: xLabel)
            }
            y += rowHeights[r]
        }
        return svg + "</svg>\n"
    }

    /// One panel with its top-left corner at (x, y).
    static func panel(_ panel: ChartPanel, legend: [[ChartSeries]], x: Double, y: Double, xAxis: Axis?, xLabel: String) -> String {
        typealias L = Layout
        let px = x + L.left, py = y + L.top, pw = L.panelWidth - L.left - L.right, ph = L.plotHeight
        var out = "<g data-panel=\"\(escape(panel.title))\">\n"
        out += "<text x=\"\(fmt(px))\" y=\"\(fmt(y + 20))\" font-size=\"13\" font-weight=\"bold\">\(escape(panel.title))</text>\n"
        out += "<rect x=\"\(fmt(px))\" y=\"\(fmt(py))\" width=\"\(fmt(pw))\" height=\"\(fmt(ph))\" fill=\"none\" stroke=\"#999999\"/>\n"
        let all = panel.series.flatMap(\.points)
        guard let xs = xAxis, !all.isEmpty else {
            out += "<text x=\"\(fmt(px + pw / 2))\" y=\"\(fmt(py + ph / 2))\" text-anchor=\"middle\" fill=\"#888888\">no data yet</text>\n"
            return out + "</g>\n"
        }
        let ys = Axis(all.map(\.y), integers: false)
        func sx(_ v: Double) -> Double { px + (v - xs.lo) / (xs.hi - xs.lo) * pw }
        func sy(_ v: Double) -> Double { py + ph - (v - ys.lo) / (ys.hi - ys.lo) * ph }
        for t in xs.ticks {
            let tx = sx(t)
            out += "<line x1=\"\(fmt(tx))\" y1=\"\(fmt(py))\" x2=\"\(fmt(tx))\" y2=\"\(fmt(py + ph + 4))\" stroke=\"#e5e5e5\"/>\n"
            out += "<text x=\"\(fmt(tx))\" y=\"\(fmt(py + ph + 16))\" text-anchor=\"middle\">\(escape(xs.label(t)))</text>\n"
        }
        for t in ys.ticks {
            let ty = sy(t)
            out += "<line x1=\"\(fmt(px - 4))\" y1=\"\(fmt(ty))\" x2=\"\(fmt(px + pw))\" y2=\"\(fmt(ty))\" stroke=\"#e5e5e5\"/>\n"
            out += "<text x=\"\(fmt(px - 7))\" y=\"\(fmt(ty + 4))\" text-anchor=\"end\">\(escape(ys.label(t)))</text>\n"
        }
        out += "<text x=\"\(fmt(px + pw / 2))\" y=\"\(fmt(py + ph + 34))\" text-anchor=\"middle\" fill=\"#555555\">\(escape(xLabel))</text>\n"
        for s in panel.series where !s.points.isEmpty {
            let points = s.points.map { "\(fmt(sx($0.x))),\(fmt(sy($0.y)))" }.joined(separator: " ")
            out += "<polyline class=\"series\" data-panel=\"\(escape(panel.title))\" data-label=\"\(escape(s.label))\" "
                + "points=\"\(points)\" fill=\"none\" stroke=\"\(s.color)\"\(strokeAttributes(s.stroke))/>\n"
            if s.markers || s.points.count == 1 {
                for p in s.points {
                    out += "<circle cx=\"\(fmt(sx(p.x)))\" cy=\"\(fmt(sy(p.y)))\" r=\"2.5\" fill=\"\(s.color)\"/>\n"
                }
            }
        }
        var ly = py + ph + L.bottom + 4
        for row in legend {
            var lx = px
            for s in row {
                out += "<line x1=\"\(fmt(lx))\" y1=\"\(fmt(ly))\" x2=\"\(fmt(lx + 22))\" y2=\"\(fmt(ly))\" stroke=\"\(s.color)\"\(strokeAttributes(s.stroke))/>\n"
                out += "<text x=\"\(fmt(lx + 27))\" y=\"\(fmt(ly + 4))\">\(escape(s.label))</text>\n"
                lx += legendWidth(s)
            }
            ly += L.legendRow
        }
        return out + "</g>\n"
    }

    static func strokeAttributes(_ stroke: ChartSeries.Stroke) -> String {
        switch stroke {
        case .solid: " stroke-width=\"1.8\""
        case .dashed: " stroke-width=\"1.8\" stroke-dasharray=\"6 3\""
        case .dotted: " stroke-width=\"1.5\" stroke-dasharray=\"2 3\""
        case .faint: " stroke-width=\"1\" stroke-opacity=\"0.3\""
        }
    }

    static func legendWidth(_ s: ChartSeries) -> Double { 27 + Double(s.label.count) * Layout.charWidth + 16 }

    /// The legend's entries flowed into rows no wider than `width`.
    static func legendRows(_ panel: ChartPanel, width: Double) -> [[ChartSeries]] {
        var rows: [[ChartSeries]] = [], row: [ChartSeries] = [], used = 0.0
        for s in panel.series where s.inLegend && !s.points.isEmpty {
            if !row.isEmpty, used + legendWidth(s) > width {
                rows.append(row)
                (row, used) = ([], 0)
            }
            row.append(s)
            used += legendWidth(s)
        }
        return row.isEmpty ? rows : rows + [row]
    }

    /// An axis through `values`: from the tick at or below the smallest to the tick at or above
    /// the largest, about five ticks 1, 2 or 5 × 10ᵏ apart (whole numbers with `integers`).
    struct Axis {
        var lo: Double, hi: Double, step: Double

        init(_ values: [Double], integers: Bool) {
            var lo = values.min()!, hi = values.max()!
            if hi - lo <= max(abs(hi), abs(lo)) * 1e-9 {   // one value: a band around it
                let pad = lo == 0 ? 1 : abs(lo) * 0.1
                (lo, hi) = (lo - pad, hi + pad)
            }
            let raw = (hi - lo) / 5, magnitude = pow(10, (log10(raw)).rounded(.down)), r = raw / magnitude
            var step = (r < 1.5 ? 1 : r < 3 ? 2 : r < 7 ? 5 : 10) * magnitude
            if integers { step = max(1, step.rounded()) }
            self.step = step
            self.lo = (lo / step).rounded(.down) * step
            self.hi = (hi / step).rounded(.up) * step
        }

        var ticks: [Double] {
            let n = Int(((hi - lo) / step).rounded())
            return (0...n).map { lo + Double($0) * step }
        }

        /// A tick's text: as many decimals as the step needs; 3e-4 for small steps, 12k for
        /// large ones.
        func label(_ v: Double) -> String {
            if abs(v) < step * 1e-6 { return "0" }
            if step < 1e-3 {
                let exponent = Int((log10(abs(v))).rounded(.down)), mantissa = v / pow(10, Double(exponent))
                let digits = max(0, -Int((log10(step / pow(10, Double(exponent)))).rounded(.down)))
                var m = String(format: "%.\(digits)f", mantissa)
                if m.contains(".") { while m.hasSuffix("0") { m.removeLast() }; if m.hasSuffix(".") { m.removeLast() } }
                return "\(m)e\(exponent)"
            }
            if step >= 1000, abs(v) >= 10000 {
                let k = v / 1000
                return k == k.rounded() ? "\(Int(k))k" : String(format: "%.1fk", k)
            }
            let decimals = max(0, -Int((log10(step)).rounded(.down)))
            return String(format: "%.\(decimals)f", v)
        }
    }

    /// Coordinates with at most two decimals, "-0" written as "0".
    static func fmt(_ v: Double) -> String {
        let r = (v * 100).rounded() / 100
        return r == r.rounded() ? String(Int(r)) : String(format: "%.2f", r)
    }

    static func escape(_ s: String) -> String {
        var out = ""
        for c in s {
            switch c {
            case "&": out += "&amp;"
            case "<": out += "&lt;"
            case ">": out += "&gt;"
            case "\"": out += "&quot;"
            default: out.append(c)
            }
        }
        return out
    }
}

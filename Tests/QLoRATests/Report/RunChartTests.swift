import Foundation
#if canImport(FoundationXML)
import FoundationXML
#endif
@testable import QLoRA
import Quant
import XCTest

/// The run's chart (well-formed SVG with the curves it should have), the scalars table, and a
/// tiny training run that leaves chart.svg and TensorBoard events holding metrics.jsonl's values.
final class RunChartTests: XCTestCase {
    /// 20 updates; full evaluations (EMA and live) at 0, 10, 20; a quick one at 5.
    func rows() -> [MetricsRow] {
        var rows: [MetricsRow] = []
        for step in 0...20 {
            if step > 0 {
                var r = MetricsRow(step: step)
                r.loss = 3 - Double(step) * 0.1 + (step % 2 == 0 ? 0.2 : -0.2)
                r.lr = 2e-4 * min(1, Double(step) / 4)
                r.tokensPerS = 900 + Double(step)
                r.gradNorm = 1.5
                rows.append(r)
            }
            if step % 10 == 0 || step == 5 {
                var e = MetricsRow(step: step)
                e.valLoss = 3 - Double(step) * 0.05
                e.valLossLive = step == 5 ? nil : 3 - Double(step) * 0.08
                e.valPpl = exp(e.valLoss!)
                e.kind = step == 5 ? "quick" : "full"
                e.ema = true
                rows.append(e)
            }
        }
        return rows
    }

    /// What an SVG draws: (panel, label) → point count of each `polyline.series`.
    final class SeriesCollector: NSObject, XMLParserDelegate {
        var series: [String: Int] = [:]
        var colors: [String: String] = [:]
        var texts: [String] = []
        private var text = ""
        func parser(_ parser: XMLParser, didStartElement name: String, namespaceURI: String?, qualifiedName: String?,
                    attributes: [String: String] = [:]) {
            text = ""
            guard name == "polyline", attributes["class"] == "series", let panel = attributes["data-panel"],
                  let label = attributes["data-label"], let points = attributes["points"] else { return }
            series[panel + " | " + label] = points.split(separator: " ").count
            colors[panel + " | " + label] = attributes["stroke"]
        }
        func parser(_ parser: XMLParser, foundCharacters string: String) { text += string }
        func parser(_ parser: XMLParser, didEndElement name: String, namespaceURI: String?, qualifiedName: String?) {
            if name == "text" { texts.append(text) }
        }
    }

    func parse(_ svg: String, file: StaticString = #filePath, line: UInt = #line) -> SeriesCollector {
        let parser = XMLParser(data: Data(svg.utf8))
        let collector = SeriesCollector()
        parser.delegate = collector
        XCTAssertTrue(parser.parse(), "not well-formed XML: \(String(describing: parser.parserError))", file: file, line: line)
        return collector
    }

    func testChartIsWellFormedSVGWithEachCurve() {
        let svg = RunChart.svg([RunScalars(name: "r&d <1>", rows: rows())])
        XCTAssertTrue(svg.hasPrefix("<?xml"))
        let drawn = parse(svg)
        XCTAssertEqual(drawn.series, [
            "Training loss | raw": 20, "Training loss | smoothed (0.9)": 20,
            "Validation loss | live weights": 3, "Validation loss | EMA weights": 3, "Validation loss | quick, EMA": 1,
            "Learning rate | ": 20, "Tokens/s | ": 20,
        ])
        XCTAssertTrue(drawn.texts.contains("r&d <1>"), "title escaped and read back")
        XCTAssertTrue(drawn.texts.contains("2e-4"), "lr ticks: \(drawn.texts)")
        XCTAssertTrue(drawn.texts.contains("update"))
        XCTAssertTrue(drawn.texts.contains("EMA weights"), "legend")
    }

    func testOverlayGivesEachRunItsColourAndName() {
        var other = rows()
        other.removeLast(3)
        let drawn = parse(RunChart.svg([RunScalars(name: "r8", rows: rows()), RunScalars(name: "r16", rows: other)]))
        XCTAssertEqual(drawn.series["Training loss | r8"], 20)
        XCTAssertEqual(drawn.series["Training loss | r16"], 18)   // updates 19 and 20 and the evaluation at 20 removed
        XCTAssertEqual(drawn.series["Validation loss | r16 · EMA weights"], 2)
        XCTAssertEqual(drawn.colors["Training loss | r8"], drawn.colors["Validation loss | r8 · live weights"])
        XCTAssertNotEqual(drawn.colors["Training loss | r8"], drawn.colors["Training loss | r16"])
        XCTAssertEqual(drawn.colors["Learning rate | r16"], drawn.colors["Training loss | r16"])
    }

    func testEmptyRunDrawsEmptyPanels() {
        let drawn = parse(RunChart.svg([RunScalars(name: "new", rows: [])]))
        XCTAssertEqual(drawn.series, [:])
        XCTAssertEqual(drawn.texts.filter { $0 == "no data yet" }.count, 4)
    }

    /// TensorBoard's smoothing, by hand at w = 0.6: 1, (0.6·0.4 + 0.4·2)/(1 − 0.36), …
    func testSmoothingIsTensorBoards() {
        let s = RunChart.smoothed([1, 2, 3], weight: 0.6)
        XCTAssertEqual(s[0], 1, accuracy: 1e-12)
        XCTAssertEqual(s[1], 1.04 / 0.64, accuracy: 1e-12)
        XCTAssertEqual(s[2], 1.824 / 0.784, accuracy: 1e-12)
        XCTAssertEqual(RunChart.smoothed([5, 7], weight: 0), [5, 7])
    }

    func testAxisTicksAreRoundNumbers() {
        let lr = SVGChart.Axis([0, 2e-4], integers: false)
        XCTAssertEqual(lr.ticks.map(lr.label), ["0", "5e-5", "1e-4", "1.5e-4", "2e-4"])
        let loss = SVGChart.Axis([1.23, 4.9], integers: false)
        XCTAssertEqual(loss.ticks.map(loss.label), ["1", "2", "3", "4", "5"])
        let steps = SVGChart.Axis([0, 3], integers: true)
        XCTAssertEqual(steps.ticks.map(steps.label), ["0", "1", "2", "3"])
        let speed = SVGChart.Axis([12_000, 31_000], integers: false)
        XCTAssertEqual(speed.ticks.map(speed.label), ["10k", "15k", "20k", "25k", "30k", "35k"])
        let flat = SVGChart.Axis([2, 2], integers: false)
        XCTAssertLessThan(flat.lo, 2)
        XCTAssertGreaterThan(flat.hi, 2)
    }

    func testScalarTagsFollowTheTable() {
        var train = MetricsRow(step: 3)
        train.loss = 1.5
        train.lr = 1e-4
        train.metrics = ["rewards/chosen": 0.25]
        XCTAssertEqual(train.scalars.map(\.tag), ["train/loss", "train/learning_rate", "train/rewards/chosen"])
        var eval = MetricsRow(step: 3)
        eval.valLoss = 1.2
        eval.valLossLive = 1.1
        eval.valPpl = exp(1.2)
        eval.ema = true
        eval.kind = "full"
        eval.metrics = ["val_rewards/margins": 0.5]
        XCTAssertEqual(eval.scalars.map(\.tag), ["eval/loss", "eval/loss_ema", "eval/perplexity_ema", "eval/rewards/margins_ema"])
        XCTAssertEqual(eval.scalars.map(\.value), [1.1, 1.2, exp(1.2), 0.5])
        eval.ema = false
        eval.valLossLive = nil
        eval.kind = "quick"
        XCTAssertEqual(eval.scalars.map(\.tag), ["eval_quick/loss", "eval_quick/perplexity", "eval_quick/rewards/margins"])
        XCTAssertEqual(with(MetricsRow(step: 4)) { $0.event = "alert" }.scalars.count, 0)
    }

    func testMetricsFileTornLastLineIsLeftOutAndABadLineNamed() throws {
        let dir = TempDir()
        dir.write(RunLayout.metricsFile, "{\"step\":1,\"loss\":2.5}\n{\"step\":2,\"lo")
        XCTAssertEqual(try MetricsRow.load(run: dir.path).map(\.step), [1])
        dir.write(RunLayout.metricsFile, "{\"step\":1,\"loss\":2.5}\nnot json\n")
        XCTAssertThrowsError(try MetricsRow.load(run: dir.path)) {
            guard case let .badRow(_, line, _)? = $0 as? MetricsFileError else { return XCTFail("\($0)") }
            XCTAssertEqual(line, 2)
        }
    }

    /// Sequences of 8 tokens following next = (3·prev + 1) mod 256, the first one unlabelled.
    func data(_ count: Int, seed: UInt64) -> SFTDataSet {
        var rng = SplitMix64(seed: seed)
        return SFTDataSet(examples: (0..<count).map { i in
            var ids = [Int(rng.next() % 256)]
            for _ in 1..<8 { ids.append((3 * ids.last! + 1) % 256) }
            return SFTExample(inputIds: ids, labels: [-100] + ids.dropFirst(), line: i + 1)
        }, source: "synthetic-\(seed)", padID: 0)
    }

    /// 6 updates on the tiny Llama, evaluated and checkpointed every 3, with --report-to tensorboard.
    func tinyRun(_ directory: String, resume: Bool = false) throws -> TrainingRun {
        var c = TrainingConfig(model: "tiny-llama-bnb-nf4", data: "synthetic")
        c.loraR = 4
        c.batchSize = 2
        c.maxSteps = 6
        c.evalEvery = 3
        c.ema = 0.9
        c.plan = false
        c.speedAlerts = false
        c.reportTo = .tensorboard
        return try TrainingRun(config: c, directory: directory, model: LlamaTrainerTests.tiny, train: data(12, seed: 1),
                               validation: data(4, seed: 2), resume: resume) { _ in }
    }

    /// A 6-update run: chart.svg holds its curves, the event file holds metrics.jsonl's scalars
    /// (float-rounded), step for step.
    func testTinyRunWritesChartAndTensorBoardEvents() throws {
        let dir = TempDir()
        let run = dir.path + "/run"
        XCTAssertTrue(try tinyRun(run).run { _ in })

        let drawn = parse(try String(contentsOfFile: run + "/" + RunLayout.chartFile, encoding: .utf8))
        XCTAssertEqual(drawn.series["Training loss | raw"], 6)
        XCTAssertEqual(drawn.series["Validation loss | EMA weights"], 3)   // updates 0, 3, 6
        XCTAssertEqual(drawn.series["Validation loss | live weights"], 3)
        XCTAssertEqual(drawn.series["Learning rate | "], 6)
        // A PNG where a converter works here (rsvg-convert), none without one; never a .partial.
        let png = FileManager.default.contents(atPath: run + "/" + RunLayout.chartPNG)
        if PNGConverter.found == nil { XCTAssertNil(png) }
        if let png { XCTAssertEqual(Array(png.prefix(8)), [0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A]) }
        XCTAssertFalse(try FileManager.default.contentsOfDirectory(atPath: run).contains { $0.hasSuffix(".partial") })

        let tb = run + "/" + RunLayout.tensorBoardDirectory
        let files = try FileManager.default.contentsOfDirectory(atPath: tb)
        XCTAssertEqual(files.count, 1)
        let events = try TensorBoardEventsTests.readEvents(tb + "/" + files[0])
        XCTAssertEqual(events.first?.fileVersion, "brain.Event:2")
        var inEvents: [String: [(Int, Float)]] = [:]
        for e in events.dropFirst() { for s in e.scalars { inEvents[s.tag, default: []].append((e.step, s.value)) } }
        let rows = try MetricsRow.load(run: run)
        XCTAssertEqual(inEvents["train/loss"]?.map(\.0), [1, 2, 3, 4, 5, 6])
        XCTAssertEqual(inEvents["train/loss"]?.map(\.1), rows.compactMap(\.loss).map(Float.init))
        XCTAssertEqual(inEvents["train/learning_rate"]?.map(\.1), rows.compactMap(\.lr).map(Float.init))
        XCTAssertEqual(inEvents["train/tokens_per_second"]?.count, 6)
        XCTAssertEqual(inEvents["eval/loss_ema"]?.map(\.0), [0, 3, 6])
        XCTAssertEqual(inEvents["eval/loss_ema"]?.map(\.1), rows.compactMap(\.valLoss).map(Float.init))
        XCTAssertEqual(inEvents["eval/loss"]?.map(\.1), rows.compactMap(\.valLossLive).map(Float.init))
        XCTAssertEqual(Set(inEvents.keys), Set(RunScalars(name: "", rows: rows).series.keys))
    }

    /// A run killed after update 5 (checkpoint 3, rows and events up to 5) and resumed: the chart
    /// has each update once, and the new event file restarts at update 4 after the old one.
    func testResumedRunRedrawsFromTheKeptRowsAndRestartsTheEvents() throws {
        let dir = TempDir()
        let (a, b) = (dir.path + "/a", dir.path + "/b")
        XCTAssertTrue(try tinyRun(a).run { _ in })
        let fm = FileManager.default
        try fm.createDirectory(atPath: b, withIntermediateDirectories: true)
        for name in [RunLayout.configFile, RunLayout.checkpoint(step: 3), RunLayout.tensorBoardDirectory] {
            try fm.copyItem(atPath: a + "/" + name, toPath: b + "/" + name)
        }
        let killed = try String(contentsOfFile: a + "/" + RunLayout.metricsFile, encoding: .utf8).split(separator: "\n")
            .filter { try! JSONDecoder().decode(MetricsRow.self, from: Data($0.utf8)).step <= 5 }
        try (killed.joined(separator: "\n") + "\n").write(toFile: b + "/" + RunLayout.metricsFile, atomically: true, encoding: .utf8)

        let resumed = try tinyRun(b, resume: true)
        XCTAssertEqual(resumed.step, 3)
        XCTAssertTrue(try resumed.run { _ in })
        let drawn = parse(try String(contentsOfFile: b + "/" + RunLayout.chartFile, encoding: .utf8))
        XCTAssertEqual(drawn.series["Training loss | raw"], 6)
        XCTAssertEqual(drawn.series["Validation loss | EMA weights"], 3)
        let files = try fm.contentsOfDirectory(atPath: b + "/" + RunLayout.tensorBoardDirectory).sorted()
        XCTAssertEqual(files.count, 2)
        let events = try TensorBoardEventsTests.readEvents(b + "/" + RunLayout.tensorBoardDirectory + "/" + files[1])
        XCTAssertEqual(events.count, 2 + 3 + 1)   // version, restart; updates 4–6; the evaluation at 6
        XCTAssertEqual(events[1].sessionStatus, 1)
        XCTAssertEqual(events[1].step, 4)
        XCTAssertEqual(events.dropFirst(2).map(\.step), [4, 5, 6, 6])
    }
}

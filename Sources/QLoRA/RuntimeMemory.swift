import Foundation

/// This process's resident memory, as the training log, `bench` and the export reports show it.
public enum RuntimeMemory {
    /// Peak resident memory of this process (getrusage's ru_maxrss, KiB on Linux).
    public static func peakRSS() -> Int {
        var usage = rusage()
        getrusage(RUSAGE_SELF.rawValue, &usage)
        return Int(usage.ru_maxrss) * 1024
    }

    /// Resident bytes now (/proc/self/statm), 0 where that is unavailable.
    public static func currentRSS() -> Int {
        guard let text = try? String(contentsOfFile: "/proc/self/statm", encoding: .utf8) else { return 0 }
        let fields = text.split(separator: " ")
        guard fields.count > 1, let pages = Int(fields[1]) else { return 0 }
        return pages * Int(sysconf(Int32(_SC_PAGESIZE)))
    }
}

extension Quantizer {
    /// The old spelling of `RuntimeMemory.peakRSS()`, still called by MergedExport,
    /// MergedRequantize, GGUFExport and SyntheticFolderWriter; goes once they call RuntimeMemory.
    public static func peakRSS() -> Int { RuntimeMemory.peakRSS() }
}

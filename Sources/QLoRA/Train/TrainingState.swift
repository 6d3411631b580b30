import Foundation

/// What a checkpoint keeps besides tensors: where the run is and what its random streams and
/// data iterator need to continue exactly.
public struct TrainingState: Sendable, Equatable {
    /// Optimizer updates done; the checkpoint directory is `checkpoint-<step>`.
    public var step: Int
    /// The LR schedule's position: updates whose learning rate has been used (`LRSchedule.lr(at:)`
    /// takes this next).
    public var schedulerStep: Int
    /// Each random stream's whole state under a name of the caller's, e.g. `SplitMix64.state`.
    public var rngStates: [String: UInt64]
    /// The data iterator's state, opaque bytes (usually JSON) the caller encodes and decodes.
    public var dataState: Data

    public init(step: Int, schedulerStep: Int, rngStates: [String: UInt64] = [:], dataState: Data = Data()) {
        self.step = step
        self.schedulerStep = schedulerStep
        self.rngStates = rngStates
        self.dataState = dataState
    }

    /// `dataState` as the JSON of a Codable value.
    public init(step: Int, schedulerStep: Int, rngStates: [String: UInt64] = [:], dataState: some Encodable) throws {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        self.init(step: step, schedulerStep: schedulerStep, rngStates: rngStates, dataState: try encoder.encode(dataState))
    }

    /// Decodes `dataState` written by the Codable initializer.
    public func decodeDataState<D: Decodable>(_ type: D.Type) throws -> D {
        try JSONDecoder().decode(type, from: dataState)
    }
}

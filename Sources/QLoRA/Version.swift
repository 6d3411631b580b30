/// qlora's version, as `qlora --version` prints it and the run's tools report it: the minor
/// number counts the issues landed (0.16: the ecosystem around a run).
public enum QLoRAVersion {
    public static let string = "0.16.0"
}

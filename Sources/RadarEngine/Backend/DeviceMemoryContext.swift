import Synchronization

/// What the process is sizing device memory for (e.g. "--batch-size 4096 per rank"), named in
/// an out-of-memory report so the user knows which flag to lower.
public enum DeviceMemoryContext {
    private static let value = Mutex<String>("")
    public static var current: String {
        get { value.withLock { $0 } }
        set { value.withLock { $0 = newValue } }
    }
}

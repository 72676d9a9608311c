import Foundation

/// Ends the process now: stdio flushed, no atexit handlers or static destructors (which race
/// with threads still in OpenBLAS or the loaders), so the exit status is the one given.
public func exitNow(_ code: Int32) -> Never {
    fflush(stdout)
    fflush(stderr)
    _exit(code)
}

import CProcess
import Foundation
import RadarCore
#if canImport(Glibc)
import Glibc
#endif

/// A same-host link between two ranks of a TCP job: two single-producer single-consumer byte
/// rings in one POSIX shared-memory segment, one per direction, so frames between ranks on one
/// machine (several GPUs in a pod) are copied through memory instead of through the loopback
/// stack and the frame authentication. `TCPCommunicator` sets one up with each ring neighbour on
/// its host (see `connectSharedMemory`); the TCP connection stays open beside it, for the set-up
/// and to notice the peer's death.
///
/// The segment is created by the lower rank, mode 0600, its pages reserved (`posix_fallocate`:
/// a full /dev/shm fails there, not later with SIGBUS), and unlinked as soon as the higher rank
/// has mapped it, so nothing is left in /dev/shm once the job runs (a name left by a creator
/// killed during the set-up holds its pid, and the next creation on the host removes it). Its name and a random nonce
/// written into it travel over the authenticated TCP connection; the higher rank maps it only if
/// the nonce matches. Layout: a page of control (magic, capacity, nonce; per direction a head
/// and a tail counter of bytes written and read, on their own cache lines), then the two rings.
/// A counter's low 32 bits are the futex word a blocked side sleeps on.
final class SharedMemoryLink {
    /// Bytes of each direction's ring (env `RADAR_SHM_BYTES` overrides): 2 MiB, so that a host
    /// of 8 ranks, 8 links, fits Docker's default 64 MB /dev/shm.
    static let defaultCapacity = 2 << 20
    static let magic: UInt64 = 0x3130_4D48_5352_4452  // "RDRSHM01"
    static let controlBytes = 4096

    let base: UnsafeMutableRawPointer
    let size: Int
    let capacity: Int
    /// What is published in one step (a quarter of the ring), so the reader starts early.
    let chunk: Int
    private let outHead: UnsafeMutablePointer<UInt64>, outTail: UnsafeMutablePointer<UInt64>
    private let inHead: UnsafeMutablePointer<UInt64>, inTail: UnsafeMutablePointer<UInt64>
    private let outData: UnsafeMutableRawPointer, inData: UnsafeMutableRawPointer
    /// The segment's name while it is still linked (creator, before the peer mapped it).
    private(set) var name: String?

    /// `low`: this side is the pair's lower rank (writes direction 0, reads direction 1).
    private init(base: UnsafeMutableRawPointer, size: Int, capacity: Int, low: Bool, name: String?) {
        self.base = base
        self.size = size
        self.capacity = capacity
        self.name = name
        chunk = max(capacity / 4, 4096)
        func counter(_ direction: Int, _ which: Int) -> UnsafeMutablePointer<UInt64> {
            (base + 256 + direction * 512 + which * 128).assumingMemoryBound(to: UInt64.self)
        }
        let (o, i) = low ? (0, 1) : (1, 0)
        outHead = counter(o, 0); outTail = counter(o, 1)
        inHead = counter(i, 0); inTail = counter(i, 1)
        outData = base + SharedMemoryLink.controlBytes + o * capacity
        inData = base + SharedMemoryLink.controlBytes + i * capacity
    }

    deinit {
        munmap(base, size)
        unlink()
    }

    static func segmentBytes(capacity: Int) -> Int { controlBytes + 2 * capacity }

    /// Creates, reserves and maps a new segment for the pair (`low`, `high`) of job `jobID`:
    /// (link, name, nonce). Throws a one-line reason (no /dev/shm, no space, ...); nothing is left behind.
    static func create(jobID: UInt64, low: Int, high: Int, capacity: Int) throws -> (SharedMemoryLink, String, [UInt8]) {
        removeStaleSegments()
        let nonce = SecureRandom.bytes(32)
        let tag = nonce.prefix(6).map { String(format: "%02x", $0) }.joined()
        let name = "/radar-\(getpid())-\(String(jobID, radix: 16))-\(low)-\(high)-\(tag)"
        let fd = shm_open(name, O_CREAT | O_EXCL | O_RDWR, 0o600)
        guard fd >= 0 else { throw reason("shm_open \(name)") }
        defer { close(fd) }
        let size = segmentBytes(capacity: capacity)
        let rc = posix_fallocate(fd, 0, off_t(size))
        guard rc == 0 else {
            shm_unlink(name)
            throw LinkError("reserving \(size >> 20) MiB in /dev/shm: \(String(cString: strerror(rc)))")
        }
        guard let p = mmap(nil, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0), p != MAP_FAILED else {
            let e = reason("mmap \(name)")
            shm_unlink(name)
            throw e
        }
        p.storeBytes(of: magic, toByteOffset: 0, as: UInt64.self)
        p.storeBytes(of: UInt64(capacity), toByteOffset: 8, as: UInt64.self)
        nonce.withUnsafeBytes { (p + 16).copyMemory(from: $0.baseAddress!, byteCount: 32) }
        return (SharedMemoryLink(base: p, size: size, capacity: capacity, low: true, name: name), name, nonce)
    }

    /// Maps the segment the pair's lower rank created, if this process can see it and it holds
    /// `nonce` (so it is that rank's, on this host). Throws a one-line reason otherwise.
    static func open(name: String, nonce: [UInt8], capacity: Int) throws -> SharedMemoryLink {
        let fd = shm_open(name, O_RDWR, 0)
        guard fd >= 0 else { throw reason("shm_open \(name)") }
        defer { close(fd) }
        let size = segmentBytes(capacity: capacity)
        var st = stat()
        guard fstat(fd, &st) == 0, Int(st.st_size) == size else { throw LinkError("\(name) is not a segment of \(size) bytes") }
        guard let p = mmap(nil, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0), p != MAP_FAILED else { throw reason("mmap \(name)") }
        let same = p.load(fromByteOffset: 0, as: UInt64.self) == magic && p.load(fromByteOffset: 8, as: UInt64.self) == UInt64(capacity)
            && nonce.withUnsafeBytes { memcmp(p + 16, $0.baseAddress!, 32) == 0 }
        guard same else {
            munmap(p, size)
            throw LinkError("\(name) does not hold the nonce sent over TCP")
        }
        shm_unlink(name)  // both sides have it mapped: the name is no longer needed
        return SharedMemoryLink(base: p, size: size, capacity: capacity, low: false, name: nil)
    }

    /// Segments whose creator died before its peer mapped them (killed during set-up): the name
    /// holds the creator's pid; one no longer running is unlinked.
    static func removeStaleSegments() {
        guard let names = try? FileManager.default.contentsOfDirectory(atPath: "/dev/shm") else { return }
        for n in names where n.hasPrefix("radar-") {
            let parts = n.split(separator: "-")
            guard parts.count == 6, let pid = pid_t(parts[1]), pid > 0 else { continue }
            if kill(pid, 0) != 0 && errno == ESRCH { shm_unlink("/" + n) }
        }
    }

    /// Removes the segment's name (the mappings stay): once both ranks mapped it, or on failure.
    func unlink() {
        if let name { shm_unlink(name) }
        name = nil
    }

    /// Copies up to `count` bytes from `src` into the outbound ring (as many as are free, at most
    /// `chunk`) and publishes them; returns how many (0: the ring is full).
    func push(_ src: UnsafeRawPointer, _ count: Int) -> Int {
        let head = outHead.pointee, tail = radar_shared_load(outTail)
        let n = min(count, capacity - Int(head &- tail), chunk)
        guard n > 0 else { return 0 }
        let at = Int(head % UInt64(capacity)), first = min(n, capacity - at)
        (outData + at).copyMemory(from: src, byteCount: first)
        if first < n { outData.copyMemory(from: src + first, byteCount: n - first) }
        radar_shared_store(outHead, head &+ UInt64(n))
        radar_shared_wake(outHead)
        return n
    }

    /// Copies up to `count` published bytes out of the inbound ring into `dst` (at most `chunk`)
    /// and frees their room; returns how many (0: nothing published).
    func pull(_ dst: UnsafeMutableRawPointer, _ count: Int) -> Int {
        let tail = inTail.pointee, head = radar_shared_load(inHead)
        let n = min(count, Int(head &- tail), chunk)
        guard n > 0 else { return 0 }
        let at = Int(tail % UInt64(capacity)), first = min(n, capacity - at)
        dst.copyMemory(from: inData + at, byteCount: first)
        if first < n { (dst + first).copyMemory(from: inData, byteCount: n - first) }
        radar_shared_store(inTail, tail &+ UInt64(n))
        radar_shared_wake(inTail)
        return n
    }

    /// Whether the peer has published bytes not yet pulled.
    var hasData: Bool { radar_shared_load(inHead) != inTail.pointee }

    /// Sleeps until the peer publishes (or `microseconds` pass); returns at once if it has.
    func waitForData(microseconds: Int) {
        let head = radar_shared_load(inHead)
        guard head == inTail.pointee else { return }
        radar_shared_wait(inHead, UInt32(truncatingIfNeeded: head), Int32(microseconds))
    }

    /// Sleeps until the peer frees room in the outbound ring (or `microseconds` pass).
    func waitForRoom(microseconds: Int) {
        let tail = radar_shared_load(outTail)
        guard Int(outHead.pointee &- tail) == capacity else { return }
        radar_shared_wait(outTail, UInt32(truncatingIfNeeded: tail), Int32(microseconds))
    }

    struct LinkError: Error, CustomStringConvertible {
        let description: String
        init(_ d: String) { description = d }
    }

    private static func reason(_ what: String) -> LinkError { LinkError("\(what): \(String(cString: strerror(errno)))") }
}

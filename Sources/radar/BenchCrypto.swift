import ArgumentParser
import Foundation
import RadarCLI
import RadarCore

extension Bench {
    /// What the cryptography costs: SHA-256 (shard checksums) and the data plane's per-frame
    /// AES-GCM tag, in GB/s on one thread, from libcrypto.
    struct Crypto: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "crypto", abstract: "SHA-256 and frame-tag (AES-256-GCM) throughput on one thread, JSON out.")
        @Option(help: "Buffer size in MB.") var mb = 64
        @Option(help: "Timed repeats (median reported).") var repeats = 5

        func validate() throws {
            try requireFlag((1...4096).contains(mb), "mb", "in 1...4096", mb)
            try requireFlag(repeats >= 1, "repeats", "at least 1", repeats)
        }

        func run() throws {
            let bytes = mb << 20
            let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: bytes, alignment: 64)
            defer { buffer.deallocate() }
            for i in 0..<bytes { buffer[i] = UInt8(truncatingIfNeeded: i &* 2_654_435_761 >> 13) }
            let view = UnsafeRawBufferPointer(buffer)
            let sha = medianSeconds(repeats: repeats) {
                let d = SHA256Digest()
                d.update(view)
                _ = d.finalize()
            }
            let auth = FrameAuthenticator(key: SecureRandom.bytes(32))
            var tag = [UInt8](repeating: 0, count: FrameAuthenticator.tagBytes)
            var counter: UInt64 = 0
            let gmac = medianSeconds(repeats: repeats) {
                tag.withUnsafeMutableBytes { auth.tag(sender: 0, counter: counter, header: UnsafeRawBufferPointer(start: nil, count: 0), body: view, into: $0.baseAddress!) }
                counter += 1
            }
            let gb = Double(bytes) / 1e9
            printJSON(["bench": "crypto", "bytes": bytes, "sha256_gb_per_s": gb / sha, "frame_tag_gb_per_s": gb / gmac,
                       "library": "libcrypto", "machine": machineRecord(threads: 1)])
        }
    }
}

import Foundation
@testable import RadarDistributed
import RadarCore
import XCTest

/// Where the ranks of an mpirun job find rank 0's coordinator: over loopback on its host, at its
/// machine's addresses elsewhere (a coordinator at 127.0.0.1 would be their own machine: an
/// mpirun across hosts never got past the rendezvous, "ranks 2, 3 never registered").
final class CoordinatorAddressTests: XCTestCase {
    func testTheAnnouncementRoundTripsAndRefusesMalformedText() {
        let a = CoordinatorAnnouncement(port: 41234, token: "ab12", addresses: ["10.0.0.5", "192.168.7.2"], hostName: "node 7 (pod)")
        XCTAssertEqual(CoordinatorAnnouncement(encoded: a.encoded), a)
        let none = CoordinatorAnnouncement(port: 1, token: "t", addresses: [], hostName: "h")
        XCTAssertEqual(CoordinatorAnnouncement(encoded: none.encoded), none)
        for bad in ["", "41234", "41234 tok", "x tok - h", "0 tok - h", "70000 tok - h", "41234  - h"] {
            XCTAssertNil(CoordinatorAnnouncement(encoded: bad), bad)
        }
    }

    func testARankOnAnotherHostTriesAddressesOnItsOwnSubnetsFirstAndOneOnRankZerosHostLoopback() {
        let a = CoordinatorAnnouncement(port: 5000, token: "t", addresses: ["172.17.0.2", "10.88.0.1", "192.168.1.9"], hostName: "h0")
        let mine: [Sockets.Interface] = [.v4("10.88.0.2", 0x0A58_0002, 0xFFFF_FF00)]
        XCTAssertEqual(a.hosts(from: "h1", mine: mine), ["10.88.0.1", "172.17.0.2", "192.168.1.9"])
        XCTAssertEqual(a.hosts(from: "h1", mine: []), ["172.17.0.2", "10.88.0.1", "192.168.1.9"], "no subnet in common: as announced")
        XCTAssertEqual(a.hosts(from: "h0", mine: mine), ["127.0.0.1"], "rank 0's host")
        // An address that is this machine's own (a bridge on every host) is not rank 0's.
        let bridged = CoordinatorAnnouncement(port: 5000, token: "t", addresses: ["10.88.0.1", "172.17.0.1"], hostName: "h0")
        XCTAssertEqual(bridged.hosts(from: "h1", mine: mine + [.v4("172.17.0.1", 0xAC11_0001, 0xFFFF_0000)]), ["10.88.0.1"])
        let bare = CoordinatorAnnouncement(port: 5000, token: "t", addresses: [], hostName: "h0")
        XCTAssertEqual(bare.hosts(from: "h1", mine: mine), ["127.0.0.1"], "nothing else to try")
        // This machine's own addresses leave loopback out.
        XCTAssertFalse(CoordinatorAnnouncement.machineAddresses().contains { $0.hasPrefix("127.") })
    }

    /// An address that refuses (or drops) the connection does not hold the next one: each try
    /// waits at most a second, the error names every address.
    func testConnectingTriesEachAddressInTurn() throws {
        let (listener, port) = try Sockets.listen(host: "127.0.0.1", port: 0)
        defer { close(listener) }
        let t0 = monotonicNow()
        let (fd, reached) = try Sockets.connect(hosts: ["127.0.0.2", "127.0.0.1"], port: port, deadline: monotonicNow().addingTimeInterval(10))
        close(fd)
        XCTAssertEqual(reached, "127.0.0.1")
        XCTAssertLessThan(monotonicNow().timeIntervalSince(t0), 5)
        XCTAssertThrowsError(try Sockets.connect(hosts: ["127.0.0.2", "127.0.0.3"], port: port, deadline: monotonicNow().addingTimeInterval(0.5))) {
            let text = "\($0)"
            XCTAssertTrue(text.contains("127.0.0.2 (") && text.contains("127.0.0.3 (") && text.contains("port \(port)"), text)
        }
    }
}

import CNetlink
import IPAddressing
import XFRM

/// An independent reading of the kernel's SPD and SAD through libnl-xfrm-3's own caches, for tests that
/// cross-check ``XFRMClient``'s decoding: two decoders of the same kernel dump must agree.
///
/// Only the fields both sides model are compared. libnl 3.7 leaks some addresses while parsing policies
/// (fixed in 3.9); acceptable in tests, one reason the XFRM layer itself does not use it.
public enum LibnlOracle {
    public struct Policy: Hashable, Sendable {
        public var index: UInt32
        public var direction: UInt8
        public var priority: UInt32
        public var action: UInt8
        public var source: IPAddress?
        public var destination: IPAddress?
        public var destinationPort: UInt16
        public var reqids: [UInt32]

        public init(
            index: UInt32, direction: UInt8, priority: UInt32, action: UInt8, source: IPAddress?,
            destination: IPAddress?, destinationPort: UInt16, reqids: [UInt32]
        ) {
            self.index = index
            self.direction = direction
            self.priority = priority
            self.action = action
            self.source = source
            self.destination = destination
            self.destinationPort = destinationPort
            self.reqids = reqids
        }
    }

    public struct State: Hashable, Sendable {
        public var destination: IPAddress?
        public var spi: UInt32
        public var proto: UInt8
        public var reqid: UInt32
        public var aeadName: String?
        public var aeadKey: [UInt8]
        public var aeadICVBits: UInt32
    }

    public struct Failure: Error, CustomStringConvertible {
        public var description: String
    }

    /// Every policy libnl reads from `namespace`'s SPD (socket policies included, directions 3/4).
    public static func policies(in namespace: NetworkNamespace) throws -> [Policy] {
        try withCache(in: namespace, xfrmnl_sp_alloc_cache) { object in
            let sp = object
            let selector = xfrmnl_sp_get_sel(sp)
            var reqids: [UInt32] = []
            for i in 0..<xfrmnl_sp_get_nusertemplates(sp) {
                reqids.append(UInt32(bitPattern: xfrmnl_user_tmpl_get_reqid(xfrmnl_sp_usertemplate_n(sp, i))))
            }
            return Policy(
                index: UInt32(bitPattern: xfrmnl_sp_get_index(sp)), direction: UInt8(xfrmnl_sp_get_dir(sp)),
                priority: UInt32(bitPattern: xfrmnl_sp_get_priority(sp)), action: UInt8(xfrmnl_sp_get_action(sp)),
                source: address(xfrmnl_sel_get_saddr(selector)),
                destination: address(xfrmnl_sel_get_daddr(selector)),
                destinationPort: UInt16(truncatingIfNeeded: xfrmnl_sel_get_dport(selector)), reqids: reqids)
        }
    }

    /// Every state libnl reads from `namespace`'s SAD, with AEAD name and key where present.
    public static func states(in namespace: NetworkNamespace) throws -> [State] {
        try withCache(in: namespace, xfrmnl_sa_alloc_cache) { object in
            let sa = object
            var name = [CChar](repeating: 0, count: 128)
            var keyBits: UInt32 = 0
            var icvBits: UInt32 = 0
            var key = [CChar](repeating: 0, count: 512)
            let hasAEAD = xfrmnl_sa_get_aead_params(sa, &name, &keyBits, &icvBits, &key) == 0
            return State(
                destination: address(xfrmnl_sa_get_daddr(sa)),
                spi: UInt32(bitPattern: xfrmnl_sa_get_spi(sa)), proto: UInt8(xfrmnl_sa_get_proto(sa)),
                reqid: UInt32(bitPattern: xfrmnl_sa_get_reqid(sa)),
                aeadName: hasAEAD
                    ? String(decoding: name.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self) : nil,
                aeadKey: hasAEAD ? key.prefix(Int(keyBits + 7) / 8).map { UInt8(bitPattern: $0) } : [],
                aeadICVBits: hasAEAD ? icvBits : 0)
        }
    }

    private static func address(_ a: OpaquePointer?) -> IPAddress? {
        guard let a, let raw = nl_addr_get_binary_addr(a) else { return nil }
        let length = Int(nl_addr_get_len(a))
        return IPAddress(bytes: Array(UnsafeRawBufferPointer(start: raw, count: length)))
    }

    private static func withCache<T>(
        in namespace: NetworkNamespace,
        _ allocate: (OpaquePointer?, UnsafeMutablePointer<OpaquePointer?>?) -> Int32,
        _ read: (OpaquePointer) -> T
    ) throws -> [T] {
        let socket: OpaquePointer = try namespace.perform {
            guard let socket = nl_socket_alloc() else { throw Failure(description: "nl_socket_alloc failed") }
            let rc = nl_connect(socket, NETLINK_XFRM)
            guard rc == 0 else {
                nl_socket_free(socket)
                throw Failure(description: "nl_connect(NETLINK_XFRM): libnl error \(rc)")
            }
            return socket
        }
        defer { nl_socket_free(socket) }
        var cache: OpaquePointer?
        let rc = allocate(socket, &cache)
        guard rc == 0, let cache else { throw Failure(description: "libnl cache fill failed: \(rc)") }
        defer { nl_cache_free(cache) }
        var result: [T] = []
        var object = nl_cache_get_first(cache)
        var guardCount = 0
        while let current = object, guardCount < 1_000_000 {
            result.append(read(current))
            object = nl_cache_get_next(current)
            guardCount += 1
        }
        return result
    }
}

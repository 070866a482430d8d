import CNetlink
import IPAddressing

// Model <-> kernel struct conversions. Byte order: SPIs and ports are big-endian in the kernel's structs
// (`__be32`, `__be16`); the models keep host order.

extension IPAddress {
    /// The kernel's 16-byte `xfrm_address_t` (IPv4 in the first 4 bytes, the rest zero).
    var kernelValue: xfrm_address_t {
        var raw = xfrm_address_t()
        Swift.withUnsafeMutableBytes(of: &raw) { dst in
            withUnsafeBytes { src in dst.copyMemory(from: src) }
        }
        return raw
    }

    init(family: IPAddressFamily, kernelValue: xfrm_address_t) {
        self = Swift.withUnsafeBytes(of: kernelValue) {
            IPAddress(family: family == .inet6 ? .inet6 : .inet, raw: $0)
        }
    }
}

extension XFRMSelector {
    var kernelValue: xfrm_selector {
        var s = xfrm_selector()
        s.daddr = destination.kernelValue
        s.saddr = source.kernelValue
        s.dport = destinationPort.bigEndian
        s.dport_mask = destinationPortMask.bigEndian
        s.sport = sourcePort.bigEndian
        s.sport_mask = sourcePortMask.bigEndian
        s.family = family.rawValue
        s.prefixlen_d = destinationPrefixLength
        s.prefixlen_s = sourcePrefixLength
        s.proto = upperProtocol.rawValue
        s.ifindex = interfaceIndex
        s.user = user
        return s
    }

    init(kernelValue s: xfrm_selector, fallbackFamily: IPAddressFamily) {
        let family = IPAddressFamily(rawValue: s.family)
        let addressFamily = family == .unspecified ? fallbackFamily : family
        self.init(
            family: family,
            source: IPAddress(family: addressFamily, kernelValue: s.saddr), sourcePrefixLength: s.prefixlen_s,
            destination: IPAddress(family: addressFamily, kernelValue: s.daddr),
            destinationPrefixLength: s.prefixlen_d,
            sourcePort: UInt16(bigEndian: s.sport), sourcePortMask: UInt16(bigEndian: s.sport_mask),
            destinationPort: UInt16(bigEndian: s.dport), destinationPortMask: UInt16(bigEndian: s.dport_mask),
            upperProtocol: XFRMUpperProtocol(rawValue: s.proto), interfaceIndex: s.ifindex, user: s.user)
    }
}

extension XFRMLifetime {
    var kernelValue: xfrm_lifetime_cfg {
        var l = xfrm_lifetime_cfg()
        l.soft_byte_limit = softByteLimit
        l.hard_byte_limit = hardByteLimit
        l.soft_packet_limit = softPacketLimit
        l.hard_packet_limit = hardPacketLimit
        l.soft_add_expires_seconds = softAddExpiresSeconds
        l.hard_add_expires_seconds = hardAddExpiresSeconds
        l.soft_use_expires_seconds = softUseExpiresSeconds
        l.hard_use_expires_seconds = hardUseExpiresSeconds
        return l
    }

    init(kernelValue l: xfrm_lifetime_cfg) {
        self.init(
            softByteLimit: l.soft_byte_limit, hardByteLimit: l.hard_byte_limit,
            softPacketLimit: l.soft_packet_limit, hardPacketLimit: l.hard_packet_limit,
            softAddExpiresSeconds: l.soft_add_expires_seconds, hardAddExpiresSeconds: l.hard_add_expires_seconds,
            softUseExpiresSeconds: l.soft_use_expires_seconds, hardUseExpiresSeconds: l.hard_use_expires_seconds)
    }
}

extension XFRMLifetimeCounters {
    init(kernelValue c: xfrm_lifetime_cur) {
        self.init(bytes: c.bytes, packets: c.packets, addTime: c.add_time, useTime: c.use_time)
    }
}

extension XFRMTemplate {
    func kernelValue(policyFamily: IPAddressFamily) -> xfrm_user_tmpl {
        var t = xfrm_user_tmpl()
        t.id.daddr = destination.kernelValue
        t.id.spi = spi.bigEndian
        t.id.proto = proto.rawValue
        t.family = family.rawValue
        t.saddr = source.kernelValue
        t.reqid = reqid
        t.mode = mode.rawValue
        t.share = share
        t.optional = level == .use ? 1 : 0
        t.aalgos = authenticationAlgorithms
        t.ealgos = encryptionAlgorithms
        t.calgos = compressionAlgorithms
        return t
    }

    init(kernelValue t: xfrm_user_tmpl, policyFamily: IPAddressFamily) {
        let family = IPAddressFamily(rawValue: t.family)
        let addressFamily = family == .unspecified ? policyFamily : family
        self.init(
            proto: XFRMProtocol(rawValue: t.id.proto), mode: XFRMMode(rawValue: t.mode), reqid: t.reqid,
            level: t.optional != 0 ? .use : .required, family: family,
            source: IPAddress(family: addressFamily, kernelValue: t.saddr),
            destination: IPAddress(family: addressFamily, kernelValue: t.id.daddr),
            spi: UInt32(bigEndian: t.id.spi), share: t.share,
            authenticationAlgorithms: t.aalgos, encryptionAlgorithms: t.ealgos, compressionAlgorithms: t.calgos)
    }
}

extension XFRMMark {
    var kernelValue: xfrm_mark {
        var m = xfrm_mark()
        m.v = value
        m.m = mask
        return m
    }
}

// MARK: - Algorithms

extension XFRMAlgorithm {
    static let maximumNameLength = 63

    /// The kernel reports an `auth-trunc` algorithm twice, as `XFRMA_ALG_AUTH_TRUNC` and as the legacy
    /// `XFRMA_ALG_AUTH`: keep the complete one, and order the list aead, enc, auth, comp.
    static func canonical(_ algorithms: [XFRMAlgorithm]) -> [XFRMAlgorithm] {
        let truncated = Set(
            algorithms.compactMap { a -> String? in
                if case .authenticationTruncated = a.kind { return a.name }
                return nil
            })
        func rank(_ kind: Kind) -> Int {
            switch kind {
            case .aead: 0
            case .encryption: 1
            case .authentication, .authenticationTruncated: 2
            case .compression: 3
            }
        }
        return
            algorithms
            .filter { !($0.kind == .authentication && truncated.contains($0.name)) }
            .enumerated()
            .sorted { (rank($0.element.kind), $0.offset) < (rank($1.element.kind), $1.offset) }
            .map(\.element)
    }

    func validate(operation: String) throws(XFRMError) {
        guard !name.isEmpty, name.utf8.count <= Self.maximumNameLength else {
            throw .invalid(operation, "algorithm name must be 1...\(Self.maximumNameLength) bytes: \(name)")
        }
        guard Int(keyBits) <= key.count * 8, (Int(keyBits) + 7) / 8 == key.count else {
            throw .invalid(operation, "key of \(key.count) bytes does not match \(keyBits) bits for \(name)")
        }
    }

    /// The attribute type and payload the kernel expects for this algorithm.
    var attribute: (type: UInt16, payload: [UInt8]) {
        switch kind {
        case .encryption, .authentication, .compression:
            var a = xfrm_algo()
            setName(&a.alg_name)
            a.alg_key_len = keyBits
            let type: UInt16 =
                switch kind {
                case .encryption: _XFRMA_ALG_CRYPT
                case .authentication: _XFRMA_ALG_AUTH
                default: _XFRMA_ALG_COMP
                }
            return (type, withUnsafeBytes(of: a) { Array($0) } + key)
        case .authenticationTruncated(let bits):
            var a = xfrm_algo_auth()
            setName(&a.alg_name)
            a.alg_key_len = keyBits
            a.alg_trunc_len = bits
            return (_XFRMA_ALG_AUTH_TRUNC, withUnsafeBytes(of: a) { Array($0) } + key)
        case .aead(let bits):
            var a = xfrm_algo_aead()
            setName(&a.alg_name)
            a.alg_key_len = keyBits
            a.alg_icv_len = bits
            return (_XFRMA_ALG_AEAD, withUnsafeBytes(of: a) { Array($0) } + key)
        }
    }

    private func setName<Tuple>(_ field: inout Tuple) {
        withUnsafeMutableBytes(of: &field) { raw in
            raw.initializeMemory(as: UInt8.self, repeating: 0)
            for (i, byte) in name.utf8.prefix(raw.count - 1).enumerated() { raw[i] = byte }
        }
    }

    /// Decodes one of the algorithm attributes; nil for other attribute types.
    static func decode(_ attribute: NetlinkAttribute, operation: String) throws(XFRMError) -> XFRMAlgorithm? {
        func name<Tuple>(_ field: Tuple) -> String {
            withUnsafeBytes(of: field) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
        }
        func key(after headerSize: Int, bits: UInt32) throws(XFRMError) -> [UInt8] {
            let length = (Int(bits) + 7) / 8
            let start = attribute.payload.startIndex + headerSize
            guard attribute.payload.count >= headerSize + length else {
                throw .malformed(operation, "algorithm key of \(bits) bits does not fit attribute \(attribute.type)")
            }
            return Array(attribute.payload[start..<start + length])
        }
        switch attribute.type {
        case _XFRMA_ALG_CRYPT, _XFRMA_ALG_AUTH, _XFRMA_ALG_COMP:
            let a = try attribute.load(xfrm_algo.self, operation: operation)
            let kind: Kind =
                switch attribute.type {
                case _XFRMA_ALG_CRYPT: .encryption
                case _XFRMA_ALG_AUTH: .authentication
                default: .compression
                }
            return XFRMAlgorithm(
                kind, name: name(a.alg_name),
                key: try key(after: MemoryLayout<xfrm_algo>.size, bits: a.alg_key_len),
                keyBits: a.alg_key_len)
        case _XFRMA_ALG_AUTH_TRUNC:
            let a = try attribute.load(xfrm_algo_auth.self, operation: operation)
            return XFRMAlgorithm(
                .authenticationTruncated(truncationBits: a.alg_trunc_len), name: name(a.alg_name),
                key: try key(after: MemoryLayout<xfrm_algo_auth>.size, bits: a.alg_key_len),
                keyBits: a.alg_key_len)
        case _XFRMA_ALG_AEAD:
            let a = try attribute.load(xfrm_algo_aead.self, operation: operation)
            return XFRMAlgorithm(
                .aead(icvBits: a.alg_icv_len), name: name(a.alg_name),
                key: try key(after: MemoryLayout<xfrm_algo_aead>.size, bits: a.alg_key_len),
                keyBits: a.alg_key_len)
        default:
            return nil
        }
    }
}

// MARK: - States

extension XFRMState {
    var userSAInfo: xfrm_usersa_info {
        var info = xfrm_usersa_info()
        info.sel = selector.kernelValue
        info.id.daddr = id.destination.kernelValue
        info.id.spi = id.spi.bigEndian
        info.id.proto = id.proto.rawValue
        info.saddr = source.kernelValue
        info.lft = lifetime.kernelValue
        info.seq = sequence
        info.reqid = reqid
        info.family = family.rawValue
        info.mode = mode.rawValue
        info.replay_window = replayWindow
        info.flags = flags
        return info
    }

    func validate(operation: String) throws(XFRMError) {
        guard source.family == id.destination.family else {
            throw .invalid(operation, "src \(source) and dst \(id.destination) are of different families")
        }
        for algorithm in algorithms { try algorithm.validate(operation: operation) }
    }

    /// Appends the attributes (algorithms, encapsulation, mark) after the `xfrm_usersa_info`.
    func appendAttributes(to builder: inout NetlinkMessageBuilder) {
        for algorithm in algorithms {
            let attribute = algorithm.attribute
            builder.appendAttribute(attribute.type, bytes: attribute.payload)
        }
        if let encapsulation {
            var e = xfrm_encap_tmpl()
            e.encap_type = encapsulation.type
            e.encap_sport = encapsulation.sourcePort.bigEndian
            e.encap_dport = encapsulation.destinationPort.bigEndian
            e.encap_oa = encapsulation.originalAddress.kernelValue
            builder.appendAttribute(_XFRMA_ENCAP, e)
        }
        if let mark { builder.appendAttribute(_XFRMA_MARK, mark.kernelValue) }
    }

    init(info: xfrm_usersa_info, attributes: [NetlinkAttribute], operation: String) throws(XFRMError) {
        let family = IPAddressFamily(rawValue: info.family)
        guard family == .inet || family == .inet6 else {
            throw .malformed(operation, "state family \(info.family) is neither inet nor inet6")
        }
        self.init(
            source: IPAddress(family: family, kernelValue: info.saddr),
            destination: IPAddress(family: family, kernelValue: info.id.daddr),
            proto: XFRMProtocol(rawValue: info.id.proto), spi: UInt32(bigEndian: info.id.spi),
            mode: XFRMMode(rawValue: info.mode), reqid: info.reqid,
            selector: XFRMSelector(kernelValue: info.sel, fallbackFamily: family),
            replayWindow: info.replay_window, flags: info.flags,
            lifetime: XFRMLifetime(kernelValue: info.lft), sequence: info.seq)
        counters = XFRMLifetimeCounters(kernelValue: info.curlft)
        statistics.replayWindow = info.stats.replay_window
        statistics.replay = info.stats.replay
        statistics.integrityFailed = info.stats.integrity_failed
        var decoded: [XFRMAlgorithm] = []
        for attribute in attributes {
            if let algorithm = try XFRMAlgorithm.decode(attribute, operation: operation) {
                decoded.append(algorithm)
            } else if attribute.type == _XFRMA_MARK {
                let m = try attribute.load(xfrm_mark.self, operation: operation)
                mark = XFRMMark(value: m.v, mask: m.m)
            } else if attribute.type == _XFRMA_ENCAP {
                let e = try attribute.load(xfrm_encap_tmpl.self, operation: operation)
                encapsulation = XFRMEncapsulation(
                    type: e.encap_type, sourcePort: UInt16(bigEndian: e.encap_sport),
                    destinationPort: UInt16(bigEndian: e.encap_dport),
                    originalAddress: IPAddress(family: family, kernelValue: e.encap_oa))
            }
        }
        algorithms = XFRMAlgorithm.canonical(decoded)
    }
}

extension XFRMStateID {
    func userSAID(family: IPAddressFamily? = nil) -> xfrm_usersa_id {
        var i = xfrm_usersa_id()
        i.daddr = destination.kernelValue
        i.spi = spi.bigEndian
        i.family = (family ?? destination.family).rawValue
        i.proto = proto.rawValue
        return i
    }

    init(kernelValue i: xfrm_usersa_id) {
        let family = IPAddressFamily(rawValue: i.family)
        self.init(
            destination: IPAddress(family: family, kernelValue: i.daddr), spi: UInt32(bigEndian: i.spi),
            proto: XFRMProtocol(rawValue: i.proto))
    }
}

// MARK: - Policies

extension XFRMPolicy {
    var userPolicyInfo: xfrm_userpolicy_info {
        var p = xfrm_userpolicy_info()
        p.sel = selector.kernelValue
        p.lft = lifetime.kernelValue
        p.priority = priority
        p.index = index
        p.dir = direction.rawValue
        p.action = action.rawValue
        p.flags = flags
        p.share = share
        return p
    }

    /// The templates as the contiguous `xfrm_user_tmpl` array `XFRMA_TMPL` and `IP_XFRM_POLICY` carry.
    var templateBytes: [UInt8] {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(templates.count * MemoryLayout<xfrm_user_tmpl>.size)
        for template in templates {
            withUnsafeBytes(of: template.kernelValue(policyFamily: selector.family)) { bytes += $0 }
        }
        return bytes
    }

    func validate(operation: String) throws(XFRMError) {
        guard templates.count <= Self.maximumTemplates else {
            throw .invalid(operation, "\(templates.count) templates, the kernel takes at most \(Self.maximumTemplates)")
        }
        guard selector.sourcePrefixLength <= selector.family.addressBits,
            selector.destinationPrefixLength <= selector.family.addressBits
        else {
            throw .invalid(operation, "selector prefix longer than \(selector.family.addressBits) bits")
        }
    }

    func appendAttributes(to builder: inout NetlinkMessageBuilder) {
        if !templates.isEmpty { builder.appendAttribute(_XFRMA_TMPL, bytes: templateBytes) }
        if let mark { builder.appendAttribute(_XFRMA_MARK, mark.kernelValue) }
    }

    init(info p: xfrm_userpolicy_info, attributes: [NetlinkAttribute], operation: String) throws(XFRMError) {
        let family = IPAddressFamily(rawValue: p.sel.family)
        let selector = XFRMSelector(kernelValue: p.sel, fallbackFamily: family == .unspecified ? .inet : family)
        self.init(
            selector: selector, direction: XFRMDirection(rawValue: p.dir),
            action: XFRMPolicyAction(rawValue: p.action), priority: p.priority, index: p.index,
            flags: p.flags, share: p.share, lifetime: XFRMLifetime(kernelValue: p.lft))
        counters = XFRMLifetimeCounters(kernelValue: p.curlft)
        if let tmpl = attributes.first(_XFRMA_TMPL) {
            templates = try Self.decodeTemplates(tmpl.payload, policyFamily: selector.family, operation: operation)
        }
        if let markAttribute = attributes.first(_XFRMA_MARK) {
            let m = try markAttribute.load(xfrm_mark.self, operation: operation)
            mark = XFRMMark(value: m.v, mask: m.m)
        }
    }

    static func decodeTemplates(
        _ bytes: ArraySlice<UInt8>, policyFamily: IPAddressFamily,
        operation: String
    ) throws(XFRMError) -> [XFRMTemplate] {
        let size = MemoryLayout<xfrm_user_tmpl>.size
        guard bytes.count % size == 0 else {
            throw .malformed(operation, "template attribute of \(bytes.count) bytes is not a multiple of \(size)")
        }
        return stride(from: bytes.startIndex, to: bytes.endIndex, by: size).map { start in
            XFRMTemplate(
                kernelValue: bytes[start..<start + size].loadStruct(xfrm_user_tmpl.self),
                policyFamily: policyFamily == .unspecified ? .inet : policyFamily)
        }
    }
}

extension XFRMPolicyID {
    var userPolicyID: xfrm_userpolicy_id {
        var i = xfrm_userpolicy_id()
        switch self {
        case .selector(let selector, let direction, _):
            i.sel = selector.kernelValue
            i.dir = direction.rawValue
        case .index(let index, let direction, _):
            i.index = index
            i.dir = direction.rawValue
        }
        return i
    }

    var mark: XFRMMark? {
        switch self {
        case .selector(_, _, let mark), .index(_, _, let mark): mark
        }
    }
}

import DirectoryNames
import Foundation
import IPAddressing
import Impersonation
import SecureSocket
import XFRM

// How the secure-socket values travel: field by field, in the order below (a new field means a new protocol
// version). Decoding checks what the type itself would refuse (an address's length, a protocol number); the
// daemon validates the values as the in-process engine does.

extension ControlWriter {
    mutating func endpoint(_ value: IPEndpoint) {
        data(value.address.bytes)
        u16(value.port)
    }

    mutating func uuid(_ value: UUID) { withUnsafeBytes(of: value.uuid) { data(Array($0)) } }

    mutating func settings(_ value: SocketSecuritySettings) {
        u32(value.securityProtocol.rawValue)
        u32(value.flags.rawValue)
        optional(value.ipsec) { writer, ipsec in
            writer.u32(ipsec.flags.rawValue)
            writer.optional(ipsec.mainModePolicyKey) { $0.uuid($1) }
            writer.optional(ipsec.quickModePolicyKey) { $0.uuid($1) }
            writer.optional(ipsec.userName) { $0.string($1) }
            writer.optional(ipsec.domainName) { $0.string($1) }
            writer.optional(ipsec.password) { $0.string($1) }
        }
    }

    mutating func peerTargetName(_ value: SocketPeerTargetName) {
        u32(value.securityProtocol.rawValue)
        optional(value.peerAddress) { $0.endpoint($1) }
        string(value.name)
    }

    mutating func queryTemplate(_ value: SocketSecurityQueryTemplate) {
        u32(value.securityProtocol.rawValue)
        optional(value.peerAddress) { $0.endpoint($1) }
        u32(value.peerTokenAccessMask)
        u32(value.ipsec2Flags)
        u32(value.ipsec2FieldMask)
    }

    mutating func distinguishedName(_ value: RDNSequence) {
        array(value.rdns) { writer, rdn in
            writer.array(rdn.attributes) { writer, attribute in
                writer.array(attribute.type.oid) { $0.u32(UInt32(truncatingIfNeeded: $1)) }
                writer.data(attribute.value)
            }
        }
    }

    mutating func peerIdentity(_ value: PeerIdentity) {
        optional(value.ikeIdentity) { $0.string($1) }
        optional(value.certificateSubject) { $0.distinguishedName($1) }
        array(value.subjectAltNames) { $0.string($1) }
        array(value.directoryNames) { $0.distinguishedName($1) }
        optional(value.user) { $0.string($1) }
        optional(value.authentication) { $0.string($1.rawValue) }
    }

    mutating func stateID(_ value: XFRMStateID) {
        data(value.destination.bytes)
        u32(value.spi)
        u8(value.proto.rawValue)
    }

    /// The token handles are not sent: tokens are the client process's own handles.
    mutating func queryInfo(_ value: SocketSecurityQueryInfo) {
        u32(value.securityProtocol.rawValue)
        u32(value.flags.rawValue)
        optional(value.peerMachineIdentity) { $0.string($1) }
        optional(value.peerUserIdentity) { $0.string($1) }
        optional(value.peer) { $0.peerIdentity($1) }
        u64(value.ikeSAID)
        u64(value.childSAID)
        u32(value.negotiationError)
        optional(value.outboundSA) { $0.stateID($1) }
        optional(value.inboundSA) { $0.stateID($1) }
        optional(value.encryptionAlgorithm) { $0.string($1) }
    }
}

extension ControlReader {
    mutating func address() throws(ControlProtocolError) -> IPAddress {
        let bytes = try data()
        guard bytes.count == 4 || bytes.count == 16, let address = IPAddress(bytes: bytes) else {
            throw .invalid("an address of \(bytes.count) bytes")
        }
        return address
    }

    mutating func endpoint() throws(ControlProtocolError) -> IPEndpoint {
        IPEndpoint(address: try address(), port: try u16())
    }

    mutating func securityProtocol() throws(ControlProtocolError) -> SocketSecurityProtocol {
        let raw = try u32()
        guard let value = SocketSecurityProtocol(rawValue: raw) else { throw .invalid("security protocol \(raw)") }
        return value
    }

    mutating func uuid() throws(ControlProtocolError) -> UUID {
        let bytes = try data()
        guard bytes.count == 16 else { throw .invalid("a GUID of \(bytes.count) bytes") }
        return bytes.withUnsafeBytes { UUID(uuid: $0.loadUnaligned(as: uuid_t.self)) }
    }

    mutating func settings() throws(ControlProtocolError) -> SocketSecuritySettings {
        let securityProtocol = try securityProtocol()
        let flags = SocketSecurityFlags(rawValue: try u32())
        let ipsec = try optional { reader throws(ControlProtocolError) in
            IPsecSettings(
                flags: IPsecSettingsFlags(rawValue: try reader.u32()),
                mainModePolicyKey: try reader.optional { r throws(ControlProtocolError) in try r.uuid() },
                quickModePolicyKey: try reader.optional { r throws(ControlProtocolError) in try r.uuid() },
                userName: try reader.optional { r throws(ControlProtocolError) in try r.string() },
                domainName: try reader.optional { r throws(ControlProtocolError) in try r.string() },
                password: try reader.optional { r throws(ControlProtocolError) in try r.string() })
        }
        return SocketSecuritySettings(securityProtocol: securityProtocol, flags: flags, ipsec: ipsec)
    }

    mutating func peerTargetName() throws(ControlProtocolError) -> SocketPeerTargetName {
        SocketPeerTargetName(
            securityProtocol: try securityProtocol(),
            peerAddress: try optional { r throws(ControlProtocolError) in try r.endpoint() },
            name: try string())
    }

    mutating func queryTemplate() throws(ControlProtocolError) -> SocketSecurityQueryTemplate {
        SocketSecurityQueryTemplate(
            securityProtocol: try securityProtocol(),
            peerAddress: try optional { r throws(ControlProtocolError) in try r.endpoint() },
            peerTokenAccessMask: try u32(), ipsec2Flags: try u32(), ipsec2FieldMask: try u32())
    }

    mutating func distinguishedName() throws(ControlProtocolError) -> RDNSequence {
        RDNSequence(
            try array { reader throws(ControlProtocolError) in
                RDNSequence.RDN(
                    try reader.array { reader throws(ControlProtocolError) in
                        let oid = try reader.array { r throws(ControlProtocolError) in UInt(try r.u32()) }
                        guard oid.count >= 2 else { throw .invalid("an OID of \(oid.count) arcs") }
                        return RDNSequence.Attribute(
                            type: RDNSequence.AttributeType(oid: oid), value: try reader.data())
                    })
            })
    }

    mutating func peerIdentity() throws(ControlProtocolError) -> PeerIdentity {
        let ikeIdentity = try optional { r throws(ControlProtocolError) in try r.string() }
        let subject = try optional { r throws(ControlProtocolError) in try r.distinguishedName() }
        let names = try array { r throws(ControlProtocolError) in try r.string() }
        let directoryNames = try array { r throws(ControlProtocolError) in try r.distinguishedName() }
        let user = try optional { r throws(ControlProtocolError) in try r.string() }
        let authentication = try optional { r throws(ControlProtocolError) -> PeerIdentity.Authentication in
            let raw = try r.string()
            guard let value = PeerIdentity.Authentication(rawValue: raw) else {
                throw .invalid("authentication \(raw)")
            }
            return value
        }
        return PeerIdentity(
            ikeIdentity: ikeIdentity, certificateSubject: subject, subjectAltNames: names,
            directoryNames: directoryNames, user: user, authentication: authentication)
    }

    mutating func stateID() throws(ControlProtocolError) -> XFRMStateID {
        XFRMStateID(destination: try address(), spi: try u32(), proto: XFRMProtocol(rawValue: try u8()))
    }

    mutating func queryInfo() throws(ControlProtocolError) -> SocketSecurityQueryInfo {
        var info = SocketSecurityQueryInfo(
            securityProtocol: try securityProtocol(), flags: SocketSecurityInfoFlags(rawValue: try u32()))
        info.peerMachineIdentity = try optional { r throws(ControlProtocolError) in try r.string() }
        info.peerUserIdentity = try optional { r throws(ControlProtocolError) in try r.string() }
        info.peer = try optional { r throws(ControlProtocolError) in try r.peerIdentity() }
        info.ikeSAID = try u64()
        info.childSAID = try u64()
        info.negotiationError = try u32()
        info.outboundSA = try optional { r throws(ControlProtocolError) in try r.stateID() }
        info.inboundSA = try optional { r throws(ControlProtocolError) in try r.stateID() }
        info.encryptionAlgorithm = try optional { r throws(ControlProtocolError) in try r.string() }
        return info
    }
}

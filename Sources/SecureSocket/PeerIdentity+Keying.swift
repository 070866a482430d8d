import Impersonation
import Keying

extension PeerIdentity {
    /// Everything the keying backend authenticated about the peer of one SA pair: its IKE identity, how it proved
    /// it, its certificate's subject and subjectAltNames (when known for sure; the subject and directoryNames as
    /// structures, handed on as they are), and its second-round user.
    init(_ protection: KeyedProtection) {
        self.init(
            ikeIdentity: protection.remoteIdentity,
            certificateSubject: protection.remoteCertificate?.subject,
            subjectAltNames: protection.remoteCertificate?.subjectAltNames ?? [],
            directoryNames: protection.remoteCertificate?.directoryNames ?? [],
            user: protection.remoteUserIdentity,
            authentication: protection.authentication.map { Self.authentication($0.machine) })
    }

    static func authentication(_ machine: PeerAuthentication.Machine) -> Authentication {
        switch machine {
        case .certificate: .certificate
        case .peerKey: .peerKey
        case .groupKey: .groupKey
        case .manualKeys: .manualKeys
        }
    }
}

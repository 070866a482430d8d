/// A transform algorithm with its key, as `ip xfrm state` writes it:
/// `enc NAME KEY`, `auth NAME KEY`, `auth-trunc NAME KEY TRUNC-LEN`, `aead NAME KEY ICV-LEN`, `comp NAME`.
public struct XFRMAlgorithm: Hashable, Sendable, CustomStringConvertible {
    /// Which of the kernel's algorithm attributes carries it.
    public enum Kind: Hashable, Sendable {
        /// `XFRMA_ALG_CRYPT` (`struct xfrm_algo`).
        case encryption
        /// `XFRMA_ALG_AUTH` (`struct xfrm_algo`, the kernel's default truncation).
        case authentication
        /// `XFRMA_ALG_AUTH_TRUNC` (`struct xfrm_algo_auth`) with the truncation in bits.
        case authenticationTruncated(truncationBits: UInt32)
        /// `XFRMA_ALG_AEAD` (`struct xfrm_algo_aead`) with the ICV length in bits.
        case aead(icvBits: UInt32)
        /// `XFRMA_ALG_COMP` (`struct xfrm_algo`, no key).
        case compression
    }

    public var kind: Kind
    /// The kernel's crypto API name, e.g. `rfc4106(gcm(aes))`, `cbc(aes)`, `hmac(sha256)`. At most 63 bytes.
    public var name: String
    /// Key material (for AEAD GCM: key then 4-byte salt).
    public var key: [UInt8]
    /// The key length in bits, normally `key.count * 8`.
    public var keyBits: UInt32

    public init(_ kind: Kind, name: String, key: [UInt8], keyBits: UInt32? = nil) {
        self.kind = kind
        self.name = name
        self.key = key
        self.keyBits = keyBits ?? UInt32(key.count * 8)
    }

    /// AES-GCM with a 16-byte ICV (`aead 'rfc4106(gcm(aes))' KEY 128`); `key` is the AES key plus a 4-byte salt.
    public static func aesGCM(key: [UInt8], icvBits: UInt32 = 128) -> XFRMAlgorithm {
        XFRMAlgorithm(.aead(icvBits: icvBits), name: "rfc4106(gcm(aes))", key: key)
    }

    public var description: String {
        let hexKey = "0x" + key.map { String($0, radix: 16).leftPadded(to: 2) }.joined()
        switch kind {
        case .encryption: return "enc \(name) \(hexKey)"
        case .authentication: return "auth \(name) \(hexKey)"
        case .authenticationTruncated(let bits): return "auth-trunc \(name) \(hexKey) \(bits)"
        case .aead(let bits): return "aead \(name) \(hexKey) \(bits)"
        case .compression: return "comp \(name)"
        }
    }
}

extension String {
    func leftPadded(to width: Int) -> String {
        count >= width ? self : String(repeating: "0", count: width - count) + self
    }
}

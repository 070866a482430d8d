import CSecureSocketABI
import Glibc
import IPAddressing
import SecureSocket
import SystemPackage

// The Windows names, exported with the C ABI from libWinsockSecureSocket.so. Each returns 0 or
// SOCKET_ERROR (-1) with the reason in WSAGetLastError(). Overlapped and completion-routine arguments are
// accepted and ignored: every call here completes synchronously, as Windows does for non-overlapped sockets.

private func engine() throws(SecureSocketError) -> any SocketSecurityProvider {
    let provider = try ProcessSecurityProvider.get()
    try provider.requireOwner()
    return provider
}

/// Requires IPsec on `socket` (before bind/connect, once). NULL settings apply the defaults.
@_cdecl("WSASetSocketSecurity")
public func WSASetSocketSecurity(
    _ socket: Int32, _ settings: UnsafeRawPointer?, _ settingsLength: UInt32,
    _ overlapped: UnsafeMutableRawPointer?, _ completionRoutine: UnsafeMutableRawPointer?
) -> Int32 {
    WinsockLastError.call { () throws(SecureSocketError) in
        let parsed = try WindowsStructs.settings(settings, length: settingsLength)
        try engine().setSecurity(socket, parsed)
    }
}

/// Sets the identity the peer must prove.
@_cdecl("WSASetSocketPeerTargetName")
public func WSASetSocketPeerTargetName(
    _ socket: Int32, _ name: UnsafeRawPointer?, _ nameLength: UInt32,
    _ overlapped: UnsafeMutableRawPointer?,
    _ completionRoutine: UnsafeMutableRawPointer?
) -> Int32 {
    WinsockLastError.call { () throws(SecureSocketError) in
        let parsed = try WindowsStructs.peerTargetName(name, length: nameLength)
        try engine().setPeerTargetName(socket, parsed)
    }
}

/// Forgets the peer target name of one peer address.
@_cdecl("WSADeleteSocketPeerTargetName")
public func WSADeleteSocketPeerTargetName(
    _ socket: Int32, _ address: UnsafeRawPointer?, _ addressLength: UInt32,
    _ overlapped: UnsafeMutableRawPointer?,
    _ completionRoutine: UnsafeMutableRawPointer?
) -> Int32 {
    WinsockLastError.call { () throws(SecureSocketError) in
        let peer = try WindowsStructs.address(address, length: addressLength)
        try engine().deletePeerTargetName(socket, address: peer)
    }
}

/// Reports how the connection is protected. With a NULL buffer (or one too small) it fails with WSAEFAULT
/// (TCP, as Microsoft's sample expects) or WSAEMSGSIZE (other sockets) and writes the size needed.
@_cdecl("WSAQuerySocketSecurity")
public func WSAQuerySocketSecurity(
    _ socket: Int32, _ template: UnsafeRawPointer?, _ templateLength: UInt32,
    _ info: UnsafeMutableRawPointer?, _ infoLength: UnsafeMutablePointer<UInt32>?,
    _ overlapped: UnsafeMutableRawPointer?,
    _ completionRoutine: UnsafeMutableRawPointer?
) -> Int32 {
    WinsockLastError.call { () throws(SecureSocketError) in
        guard let infoLength else { throw SecureSocketError(.fault, "SecurityQueryInfoLen is NULL") }
        let engine = try engine()
        let isTCP = try SecureSocketEngine.socketKind(socket) == .stream
        if !isTCP && (template == nil || templateLength < UInt32(WindowsStructs.queryTemplateSize)) {
            throw SecureSocketError(.messageSize, "a datagram socket's query needs a full template")
        }
        let parsed = try WindowsStructs.queryTemplate(template, length: templateLength)
        let ipsec2 = parsed?.securityProtocol == .ipsec2
        let needed = UInt32(ipsec2 ? WindowsStructs.queryInfoIPsec2Size : WindowsStructs.queryInfoSize)
        guard let info, infoLength.pointee >= needed else {
            infoLength.pointee = needed
            throw SecureSocketError(isTCP ? .fault : .messageSize, "SecurityQueryInfo needs \(needed) bytes")
        }
        let result = try engine.query(socket, parsed)
        var out = SOCKET_SECURITY_QUERY_INFO_IPSEC2()
        out.SecurityProtocol = SOCKET_SECURITY_PROTOCOL(rawValue: result.securityProtocol.rawValue)
        out.Flags = result.flags.rawValue
        if (parsed?.peerTokenAccessMask ?? 0) != 0 {
            out.PeerApplicationAccessTokenHandle = result.peerApplicationToken
            out.PeerMachineAccessTokenHandle = result.peerMachineToken
        }
        if ipsec2 {
            let mask = parsed?.ipsec2FieldMask ?? 0
            if mask & SOCKET_QUERY_IPSEC2_FIELD_MASK_MM_SA_ID != 0 { out.MmSaId = result.ikeSAID }
            if mask & SOCKET_QUERY_IPSEC2_FIELD_MASK_QM_SA_ID != 0 { out.QmSaId = result.childSAID }
            out.NegotiationWinerr = result.negotiationError
        }
        withUnsafeBytes(of: out) { info.copyMemory(from: $0.baseAddress!, byteCount: Int(needed)) }
        infoLength.pointee = needed
    }
}

/// Connects and waits (bounded) until IPsec protects the connection. The caller/callee data and QoS arguments
/// are not supported on Linux and must be NULL.
@_cdecl("WSAConnect")
public func WSAConnect(
    _ socket: Int32, _ name: UnsafeRawPointer?, _ nameLength: Int32, _ callerData: UnsafeMutableRawPointer?,
    _ calleeData: UnsafeMutableRawPointer?, _ sqos: UnsafeMutableRawPointer?,
    _ gqos: UnsafeMutableRawPointer?
) -> Int32 {
    WinsockLastError.call { () throws(SecureSocketError) in
        guard callerData == nil, calleeData == nil, sqos == nil, gqos == nil else {
            throw SecureSocketError(.operationNotSupported, "connect data and QoS are not supported")
        }
        guard nameLength >= 0 else { throw SecureSocketError(.fault, "negative address length") }
        let peer = try WindowsStructs.address(name, length: UInt32(nameLength))
        try engine().connect(socket, to: peer, timeout: nil)
    }
}

// MARK: - Peer tokens (the Linux stand-in for CloseHandle and GetTokenInformation on a peer token)

/// Closes a peer token handle from `WSAQuerySocketSecurity`. Unknown or already closed: `WSAEINVAL`.
@_cdecl("WSSCloseToken")
public func WSSCloseToken(_ handle: UInt64) -> Int32 {
    WinsockLastError.call { () throws(SecureSocketError) in
        guard try engine().tokens.close(handle) else {
            throw SecureSocketError(.invalidArgument, "token \(handle) is not open")
        }
    }
}

/// Duplicates a peer token handle; the new handle is written to `duplicate`.
@_cdecl("WSSDuplicateToken")
public func WSSDuplicateToken(_ handle: UInt64, _ duplicate: UnsafeMutablePointer<UInt64>?) -> Int32 {
    WinsockLastError.call { () throws(SecureSocketError) in
        guard let duplicate else { throw SecureSocketError(.fault, "duplicate is NULL") }
        guard let copy = try engine().tokens.duplicate(handle) else {
            throw SecureSocketError(.invalidArgument, "token \(handle) is not open")
        }
        duplicate.pointee = copy.handle
    }
}

/// Writes the token's authenticated identity as a NUL-terminated UTF-8 string. `length` is in/out: the
/// buffer's size, then the bytes needed including the NUL (a NULL or short buffer fails with `WSAEMSGSIZE`
/// after writing the size needed).
@_cdecl("WSSGetTokenIdentity")
public func WSSGetTokenIdentity(
    _ handle: UInt64, _ buffer: UnsafeMutablePointer<CChar>?,
    _ length: UnsafeMutablePointer<UInt32>?
) -> Int32 {
    WinsockLastError.call { () throws(SecureSocketError) in
        guard let length else { throw SecureSocketError(.fault, "length is NULL") }
        guard let token = try engine().tokens.token(handle) else {
            throw SecureSocketError(.invalidArgument, "token \(handle) is not open")
        }
        let bytes = Array(token.identity.utf8) + [0]
        guard let buffer, length.pointee >= UInt32(bytes.count) else {
            length.pointee = UInt32(bytes.count)
            throw SecureSocketError(.messageSize, "the identity needs \(bytes.count) bytes")
        }
        bytes.withUnsafeBytes {
            UnsafeMutableRawPointer(buffer).copyMemory(from: $0.baseAddress!, byteCount: bytes.count)
        }
        length.pointee = UInt32(bytes.count)
    }
}

// MARK: - Impersonation

/// Makes the calling thread run as the local account mapped from the socket's authenticated peer (the peer
/// user if a second authentication round named one, else the peer machine). Stream sockets ignore `address`;
/// datagram sockets need it. Blocking sockets only. Unmapped peers fail with `WSAEACCES`; the thread is then
/// unchanged.
@_cdecl("WSAImpersonateSocketPeer")
@available(*, noasync, message: "a task may resume on another thread with the peer's credentials")
public func WSAImpersonateSocketPeer(_ socket: Int32, _ address: UnsafeRawPointer?, _ addressLength: UInt32) -> Int32 {
    WinsockLastError.call { () throws(SecureSocketError) in
        let engine = try engine()
        var peer: IPEndpoint?
        if try SecureSocketEngine.socketKind(socket) == .datagram {
            peer = try WindowsStructs.address(address, length: addressLength)
        }
        try engine.impersonatePeer(socket, peerAddress: peer)
    }
}

/// Returns the calling thread to its own credentials; success (and no change) when it was not impersonating.
@_cdecl("WSARevertImpersonation")
@available(*, noasync, message: "a task may resume on another thread with the peer's credentials")
public func WSARevertImpersonation() -> Int32 {
    WinsockLastError.call { () throws(SecureSocketError) in
        // No provider is needed to give a thread its own credentials back (a thread impersonates only through
        // this process's provider, whose log records the revert).
        try SecureSocketEngine.revertThreadImpersonation(logger: ProcessSecurityProvider.currentLogger)
    }
}

/// The local account a peer token maps to: uid, gid, and up to `*groupCount` supplementary groups (in/out).
@_cdecl("WSSGetTokenAccount")
public func WSSGetTokenAccount(
    _ handle: UInt64, _ uid: UnsafeMutablePointer<UInt32>?, _ gid: UnsafeMutablePointer<UInt32>?,
    _ groups: UnsafeMutablePointer<UInt32>?, _ groupCount: UnsafeMutablePointer<UInt32>?
) -> Int32 {
    WinsockLastError.call { () throws(SecureSocketError) in
        guard let uid, let gid, let groupCount else {
            throw SecureSocketError(.fault, "uid, gid and groupCount are required")
        }
        let account = try engine().account(forToken: handle)
        uid.pointee = account.uid
        gid.pointee = account.gid
        guard let groups, groupCount.pointee >= UInt32(account.groups.count) else {
            groupCount.pointee = UInt32(account.groups.count)
            if groups == nil && account.groups.isEmpty { return }
            throw SecureSocketError(.messageSize, "\(account.groups.count) groups")
        }
        for (index, group) in account.groups.enumerated() { groups[index] = group }
        groupCount.pointee = UInt32(account.groups.count)
    }
}

/*
 * Winsock Secure Socket Extensions for Linux: the functions, for C callers.
 * Link with -lWinsockSecureSocket. Semantics: ../../Sources/WinsockSecureSocket/Docs.docc.
 */
#ifndef WINSOCK_SECURE_SOCKET_H
#define WINSOCK_SECURE_SOCKET_H

#include "include/wsa_types.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Overlapped I/O does not exist here: pass NULL (any value is ignored, as Windows does for
   non-overlapped sockets). */
typedef void *LPWSAOVERLAPPED;
typedef void *LPWSAOVERLAPPED_COMPLETION_ROUTINE;

int WSASetSocketSecurity(SOCKET Socket, const SOCKET_SECURITY_SETTINGS *SecuritySettings,
                         uint32_t SecuritySettingsLen, LPWSAOVERLAPPED Overlapped,
                         LPWSAOVERLAPPED_COMPLETION_ROUTINE CompletionRoutine);
int WSASetSocketPeerTargetName(SOCKET Socket, const SOCKET_PEER_TARGET_NAME *PeerTargetName,
                               uint32_t PeerTargetNameLen, LPWSAOVERLAPPED Overlapped,
                               LPWSAOVERLAPPED_COMPLETION_ROUTINE CompletionRoutine);
int WSADeleteSocketPeerTargetName(SOCKET Socket, const struct sockaddr *PeerAddr, uint32_t PeerAddrLen,
                                  LPWSAOVERLAPPED Overlapped, LPWSAOVERLAPPED_COMPLETION_ROUTINE CompletionRoutine);
int WSAQuerySocketSecurity(SOCKET Socket, const SOCKET_SECURITY_QUERY_TEMPLATE *SecurityQueryTemplate,
                           uint32_t SecurityQueryTemplateLen, SOCKET_SECURITY_QUERY_INFO *SecurityQueryInfo,
                           uint32_t *SecurityQueryInfoLen, LPWSAOVERLAPPED Overlapped,
                           LPWSAOVERLAPPED_COMPLETION_ROUTINE CompletionRoutine);
int WSAImpersonateSocketPeer(SOCKET Socket, const struct sockaddr *PeerAddr, uint32_t PeerAddrLen);
int WSARevertImpersonation(void);
/* Connects and waits (bounded) until IPsec protects the connection; the Windows signature, with the
   caller/callee data and QoS arguments accepted and ignored (pass NULL). */
int WSAConnect(SOCKET s, const struct sockaddr *name, int namelen, void *lpCallerData, void *lpCalleeData,
               void *lpSQOS, void *lpGQOS);
int WSAGetLastError(void);
void WSASetLastError(int error);

/* Peer tokens (Linux stand-ins for CloseHandle / GetTokenInformation on the handles WSAQuerySocketSecurity
   returns when PeerTokenAccessMask is not zero). Each returns 0 or SOCKET_ERROR with WSAGetLastError(). */
int WSSCloseToken(uint64_t token);
int WSSDuplicateToken(uint64_t token, uint64_t *duplicate);
/* The token's authenticated identity, NUL-terminated UTF-8; *length in: buffer size, out: bytes needed. */
int WSSGetTokenIdentity(uint64_t token, char *buffer, uint32_t *length);
/* The local account the token's identity maps to (identity map): uid, gid, supplementary groups
   (*group_count in: room in groups, out: how many). */
int WSSGetTokenAccount(uint64_t token, uint32_t *uid, uint32_t *gid, uint32_t *groups, uint32_t *group_count);

#ifdef __cplusplus
}
#endif
#endif

/*
 * Windows Secure Socket Extension types (mstcpip.h) with their Windows layouts, for Linux.
 *
 * Layouts follow the Windows headers exactly (sizes and offsets pinned in layout_checks.c), with three
 * Linux mappings a C caller must know:
 *   - SOCKET is an int file descriptor; SOCKET_ERROR is -1.
 *   - WCHAR strings are UTF-16 code units (char16_t), not Linux's 4-byte wchar_t.
 *   - SOCKADDR_STORAGE is Linux's struct sockaddr_storage (128 bytes, align 8): addresses carry Linux family
 *     numbers (AF_INET 2, AF_INET6 10).
 * Only the types live here: this header is what Swift imports. The function prototypes for C callers are in
 * winsock_secure_socket.h.
 */
#ifndef WSA_TYPES_H
#define WSA_TYPES_H

#include <stdint.h>
#include <uchar.h>
#include <sys/socket.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef int SOCKET;
#define SOCKET_ERROR (-1)

typedef struct WSS_GUID {
    uint32_t Data1;
    uint16_t Data2;
    uint16_t Data3;
    uint8_t Data4[8];
} WSS_GUID;

typedef enum SOCKET_SECURITY_PROTOCOL {
    SOCKET_SECURITY_PROTOCOL_DEFAULT = 0,
    SOCKET_SECURITY_PROTOCOL_IPSEC = 1,
    SOCKET_SECURITY_PROTOCOL_IPSEC2 = 2,
    SOCKET_SECURITY_PROTOCOL_INVALID = 3
} SOCKET_SECURITY_PROTOCOL;

#define SOCKET_SETTINGS_GUARANTEE_ENCRYPTION 0x1u
#define SOCKET_SETTINGS_ALLOW_INSECURE 0x2u

#define SOCKET_SETTINGS_IPSEC_SKIP_FILTER_INSTANTIATION 0x1u
#define SOCKET_SETTINGS_IPSEC_OPTIONAL_PEER_NAME_VERIFICATION 0x2u
#define SOCKET_SETTINGS_IPSEC_ALLOW_FIRST_INBOUND_PKT_UNENCRYPTED 0x4u
#define SOCKET_SETTINGS_IPSEC_PEER_NAME_IS_RAW_FORMAT 0x8u

#define SOCKET_INFO_CONNECTION_SECURED 0x1u
#define SOCKET_INFO_CONNECTION_ENCRYPTED 0x2u
#define SOCKET_INFO_CONNECTION_IMPERSONATED 0x4u

#define SOCKET_QUERY_IPSEC2_ABORT_CONNECTION_ON_FIELD_CHANGE 0x1u
#define SOCKET_QUERY_IPSEC2_FIELD_MASK_MM_SA_ID 0x1u
#define SOCKET_QUERY_IPSEC2_FIELD_MASK_QM_SA_ID 0x2u

/* 8 bytes. */
typedef struct SOCKET_SECURITY_SETTINGS {
    SOCKET_SECURITY_PROTOCOL SecurityProtocol;
    uint32_t SecurityFlags;
} SOCKET_SECURITY_SETTINGS;

/* 88 bytes; the UTF-16 strings (user, domain, password; lengths in bytes) start at offset 84. */
typedef struct SOCKET_SECURITY_SETTINGS_IPSEC {
    SOCKET_SECURITY_PROTOCOL SecurityProtocol;
    uint32_t SecurityFlags;
    uint32_t IpsecFlags;
    WSS_GUID AuthipMMPolicyKey;
    WSS_GUID AuthipQMPolicyKey;
    WSS_GUID Reserved;
    uint64_t Reserved2;
    uint32_t UserNameStringLen;
    uint32_t DomainNameStringLen;
    uint32_t PasswordStringLen;
    char16_t AllStrings[];
} SOCKET_SECURITY_SETTINGS_IPSEC;

/* 144 bytes; the UTF-16 name starts at offset 140. */
typedef struct SOCKET_PEER_TARGET_NAME {
    SOCKET_SECURITY_PROTOCOL SecurityProtocol;
    struct sockaddr_storage PeerAddress;
    uint32_t PeerTargetNameStringLen;
    char16_t AllStrings[];
} SOCKET_PEER_TARGET_NAME;

/* 144 bytes. */
typedef struct SOCKET_SECURITY_QUERY_TEMPLATE {
    SOCKET_SECURITY_PROTOCOL SecurityProtocol;
    struct sockaddr_storage PeerAddress;
    uint32_t PeerTokenAccessMask;
} SOCKET_SECURITY_QUERY_TEMPLATE;

/* 152 bytes. */
typedef struct SOCKET_SECURITY_QUERY_TEMPLATE_IPSEC2 {
    SOCKET_SECURITY_PROTOCOL SecurityProtocol;
    struct sockaddr_storage PeerAddress;
    uint32_t PeerTokenAccessMask;
    uint32_t Flags;
    uint32_t FieldMask;
} SOCKET_SECURITY_QUERY_TEMPLATE_IPSEC2;

/* 24 bytes. Token handles are uint64 values; close them with WSSCloseToken. */
typedef struct SOCKET_SECURITY_QUERY_INFO {
    SOCKET_SECURITY_PROTOCOL SecurityProtocol;
    uint32_t Flags;
    uint64_t PeerApplicationAccessTokenHandle;
    uint64_t PeerMachineAccessTokenHandle;
} SOCKET_SECURITY_QUERY_INFO;

/* 64 bytes. */
typedef struct SOCKET_SECURITY_QUERY_INFO_IPSEC2 {
    SOCKET_SECURITY_PROTOCOL SecurityProtocol;
    uint32_t Flags;
    uint64_t PeerApplicationAccessTokenHandle;
    uint64_t PeerMachineAccessTokenHandle;
    uint64_t MmSaId;
    uint64_t QmSaId;
    uint32_t NegotiationWinerr;
    WSS_GUID SaLookupContext;
} SOCKET_SECURITY_QUERY_INFO_IPSEC2;

/* Winsock error numbers (WSAGetLastError). */
#define WSA_IO_PENDING 997
#define WSAEINTR 10004
#define WSAEBADF 10009
#define WSAEACCES 10013
#define WSAEFAULT 10014
#define WSAEINVAL 10022
#define WSAEWOULDBLOCK 10035
#define WSAEINPROGRESS 10036
#define WSAEALREADY 10037
#define WSAENOTSOCK 10038
#define WSAEMSGSIZE 10040
#define WSAEOPNOTSUPP 10045
#define WSAEAFNOSUPPORT 10047
#define WSAEADDRINUSE 10048
#define WSAENETDOWN 10050
#define WSAENETUNREACH 10051
#define WSAECONNABORTED 10053
#define WSAECONNRESET 10054
#define WSAEISCONN 10056
#define WSAENOTCONN 10057
#define WSAETIMEDOUT 10060
#define WSAECONNREFUSED 10061
#define WSAEHOSTUNREACH 10065
#define WSANOTINITIALISED 10093
#define WSASYSCALLFAILURE 10107

#ifdef __cplusplus
}
#endif
#endif

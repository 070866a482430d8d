/* Pins the Windows layouts of the secure-socket structs (winsock-spec.md section 1). A mismatch fails
   the build, not a caller. */
#include <stddef.h>
#include "include/wsa_types.h"

_Static_assert(sizeof(WSS_GUID) == 16 && _Alignof(WSS_GUID) == 4, "GUID");
_Static_assert(sizeof(SOCKET_SECURITY_PROTOCOL) == 4, "enum is 4 bytes");
_Static_assert(sizeof(struct sockaddr_storage) == 128 && _Alignof(struct sockaddr_storage) == 8, "storage");

_Static_assert(sizeof(SOCKET_SECURITY_SETTINGS) == 8, "SOCKET_SECURITY_SETTINGS");
_Static_assert(offsetof(SOCKET_SECURITY_SETTINGS, SecurityFlags) == 4, "SecurityFlags");

_Static_assert(sizeof(SOCKET_SECURITY_SETTINGS_IPSEC) == 88, "SOCKET_SECURITY_SETTINGS_IPSEC");
_Static_assert(offsetof(SOCKET_SECURITY_SETTINGS_IPSEC, IpsecFlags) == 8, "IpsecFlags");
_Static_assert(offsetof(SOCKET_SECURITY_SETTINGS_IPSEC, AuthipMMPolicyKey) == 12, "MM key");
_Static_assert(offsetof(SOCKET_SECURITY_SETTINGS_IPSEC, AuthipQMPolicyKey) == 28, "QM key");
_Static_assert(offsetof(SOCKET_SECURITY_SETTINGS_IPSEC, Reserved) == 44, "Reserved");
_Static_assert(offsetof(SOCKET_SECURITY_SETTINGS_IPSEC, Reserved2) == 64, "Reserved2");
_Static_assert(offsetof(SOCKET_SECURITY_SETTINGS_IPSEC, UserNameStringLen) == 72, "user len");
_Static_assert(offsetof(SOCKET_SECURITY_SETTINGS_IPSEC, DomainNameStringLen) == 76, "domain len");
_Static_assert(offsetof(SOCKET_SECURITY_SETTINGS_IPSEC, PasswordStringLen) == 80, "password len");
_Static_assert(offsetof(SOCKET_SECURITY_SETTINGS_IPSEC, AllStrings) == 84, "strings");

_Static_assert(sizeof(SOCKET_PEER_TARGET_NAME) == 144, "SOCKET_PEER_TARGET_NAME");
_Static_assert(offsetof(SOCKET_PEER_TARGET_NAME, PeerAddress) == 8, "PeerAddress");
_Static_assert(offsetof(SOCKET_PEER_TARGET_NAME, PeerTargetNameStringLen) == 136, "name len");
_Static_assert(offsetof(SOCKET_PEER_TARGET_NAME, AllStrings) == 140, "name");

_Static_assert(sizeof(SOCKET_SECURITY_QUERY_TEMPLATE) == 144, "SOCKET_SECURITY_QUERY_TEMPLATE");
_Static_assert(offsetof(SOCKET_SECURITY_QUERY_TEMPLATE, PeerAddress) == 8, "template PeerAddress");
_Static_assert(offsetof(SOCKET_SECURITY_QUERY_TEMPLATE, PeerTokenAccessMask) == 136, "access mask");

_Static_assert(sizeof(SOCKET_SECURITY_QUERY_TEMPLATE_IPSEC2) == 152, "SOCKET_SECURITY_QUERY_TEMPLATE_IPSEC2");
_Static_assert(offsetof(SOCKET_SECURITY_QUERY_TEMPLATE_IPSEC2, Flags) == 140, "IPSEC2 Flags");
_Static_assert(offsetof(SOCKET_SECURITY_QUERY_TEMPLATE_IPSEC2, FieldMask) == 144, "IPSEC2 FieldMask");

_Static_assert(sizeof(SOCKET_SECURITY_QUERY_INFO) == 24, "SOCKET_SECURITY_QUERY_INFO");
_Static_assert(offsetof(SOCKET_SECURITY_QUERY_INFO, PeerApplicationAccessTokenHandle) == 8, "app token");
_Static_assert(offsetof(SOCKET_SECURITY_QUERY_INFO, PeerMachineAccessTokenHandle) == 16, "machine token");

_Static_assert(sizeof(SOCKET_SECURITY_QUERY_INFO_IPSEC2) == 64, "SOCKET_SECURITY_QUERY_INFO_IPSEC2");
_Static_assert(offsetof(SOCKET_SECURITY_QUERY_INFO_IPSEC2, MmSaId) == 24, "MmSaId");
_Static_assert(offsetof(SOCKET_SECURITY_QUERY_INFO_IPSEC2, QmSaId) == 32, "QmSaId");
_Static_assert(offsetof(SOCKET_SECURITY_QUERY_INFO_IPSEC2, NegotiationWinerr) == 40, "NegotiationWinerr");
_Static_assert(offsetof(SOCKET_SECURITY_QUERY_INFO_IPSEC2, SaLookupContext) == 44, "SaLookupContext");

/* A C target needs a symbol; this one reports the ABI revision. */
int wss_abi_revision(void) { return 1; }

/*
 * The Windows "secure TCP server" sample flow, in C, against libWinsockSecureSocket.so:
 * socket -> WSASetSocketSecurity -> bind -> listen -> accept -> recv -> WSAQuerySocketSecurity -> send.
 * Usage: secure_tcp_server BIND-ADDRESS PORT   (serves one client; exit 0 only if it was secured and encrypted)
 */
#include "../winsock_secure_socket.h"
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int fail(const char *what) {
    fprintf(stderr, "%s failed: WSAGetLastError() = %d\n", what, WSAGetLastError());
    return 2;
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s BIND-ADDRESS PORT\n", argv[0]);
        return 64;
    }
    struct sockaddr_storage local;
    socklen_t local_len;
    memset(&local, 0, sizeof local);
    int family = strchr(argv[1], ':') ? AF_INET6 : AF_INET;
    if (family == AF_INET6) {
        struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&local;
        sin6->sin6_family = AF_INET6;
        sin6->sin6_port = htons((uint16_t)atoi(argv[2]));
        if (inet_pton(AF_INET6, argv[1], &sin6->sin6_addr) != 1) return 64;
        local_len = sizeof *sin6;
    } else {
        struct sockaddr_in *sin = (struct sockaddr_in *)&local;
        sin->sin_family = AF_INET;
        sin->sin_port = htons((uint16_t)atoi(argv[2]));
        if (inet_pton(AF_INET, argv[1], &sin->sin_addr) != 1) return 64;
        local_len = sizeof *sin;
    }

    SOCKET listener = socket(family, SOCK_STREAM, IPPROTO_TCP);
    SOCKET_SECURITY_SETTINGS settings = {SOCKET_SECURITY_PROTOCOL_DEFAULT, SOCKET_SETTINGS_GUARANTEE_ENCRYPTION};
    if (WSASetSocketSecurity(listener, &settings, sizeof settings, NULL, NULL) == SOCKET_ERROR)
        return fail("WSASetSocketSecurity");
    if (bind(listener, (struct sockaddr *)&local, local_len) != 0 || listen(listener, 10) != 0) return 3;
    printf("listening\n");
    fflush(stdout);

    SOCKET client = accept(listener, NULL, NULL);
    if (client < 0) return 3;
    char data[9] = {0};
    if (recv(client, data, 8, MSG_WAITALL) != 8) return 3;
    printf("received: %s\n", data);

    SOCKET_SECURITY_QUERY_INFO_IPSEC2 info;
    SOCKET_SECURITY_QUERY_TEMPLATE_IPSEC2 template;
    memset(&template, 0, sizeof template);
    template.SecurityProtocol = SOCKET_SECURITY_PROTOCOL_IPSEC2;
    template.FieldMask = SOCKET_QUERY_IPSEC2_FIELD_MASK_MM_SA_ID | SOCKET_QUERY_IPSEC2_FIELD_MASK_QM_SA_ID;
    template.PeerTokenAccessMask = 1; /* ask for the peer's token handles */
    uint32_t info_len = sizeof info;
    if (WSAQuerySocketSecurity(client, (SOCKET_SECURITY_QUERY_TEMPLATE *)&template, sizeof template,
                               (SOCKET_SECURITY_QUERY_INFO *)&info, &info_len, NULL, NULL) == SOCKET_ERROR)
        return fail("WSAQuerySocketSecurity");
    printf("query: size %u flags 0x%x%s%s ike-sa %llu child-sa %llu\n", info_len, info.Flags,
           (info.Flags & SOCKET_INFO_CONNECTION_SECURED) ? " SECURED" : "",
           (info.Flags & SOCKET_INFO_CONNECTION_ENCRYPTED) ? " ENCRYPTED" : "",
           (unsigned long long)info.MmSaId, (unsigned long long)info.QmSaId);
    if (info.PeerMachineAccessTokenHandle != 0) {
        char identity[256];
        uint32_t identity_len = sizeof identity;
        if (WSSGetTokenIdentity(info.PeerMachineAccessTokenHandle, identity, &identity_len) == SOCKET_ERROR)
            return fail("WSSGetTokenIdentity");
        printf("peer machine: %s\n", identity);
        if (WSSCloseToken(info.PeerMachineAccessTokenHandle) == SOCKET_ERROR) return fail("WSSCloseToken");
        if (WSSCloseToken(info.PeerMachineAccessTokenHandle) != SOCKET_ERROR || WSAGetLastError() != WSAEINVAL)
            return fail("closing a closed token");
    }
    if (send(client, "91011121314", 11, 0) != 11) return 3;
    int ok = (info.Flags & SOCKET_INFO_CONNECTION_SECURED) && (info.Flags & SOCKET_INFO_CONNECTION_ENCRYPTED)
             && info.MmSaId != 0 && info.QmSaId != 0;
    close(client);
    close(listener);
    return ok ? 0 : 4;
}

/*
 * The Windows "secure TCP client" sample flow, in C, against libWinsockSecureSocket.so:
 * socket -> WSASetSocketSecurity -> WSASetSocketPeerTargetName -> WSAConnect -> send/recv -> WSAQuerySocketSecurity.
 * Usage: secure_tcp_client SERVER-ADDRESS PORT TARGET-NAME   (exit 0 only if the connection was secured and encrypted)
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
    if (argc != 4) {
        fprintf(stderr, "usage: %s SERVER-ADDRESS PORT TARGET-NAME\n", argv[0]);
        return 64;
    }
    struct sockaddr_storage server;
    socklen_t server_len;
    memset(&server, 0, sizeof server);
    int family = strchr(argv[1], ':') ? AF_INET6 : AF_INET;
    if (family == AF_INET6) {
        struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&server;
        sin6->sin6_family = AF_INET6;
        sin6->sin6_port = htons((uint16_t)atoi(argv[2]));
        if (inet_pton(AF_INET6, argv[1], &sin6->sin6_addr) != 1) return 64;
        server_len = sizeof *sin6;
    } else {
        struct sockaddr_in *sin = (struct sockaddr_in *)&server;
        sin->sin_family = AF_INET;
        sin->sin_port = htons((uint16_t)atoi(argv[2]));
        if (inet_pton(AF_INET, argv[1], &sin->sin_addr) != 1) return 64;
        server_len = sizeof *sin;
    }

    SOCKET s = socket(family, SOCK_STREAM, IPPROTO_TCP);
    SOCKET_SECURITY_SETTINGS settings = {SOCKET_SECURITY_PROTOCOL_DEFAULT, SOCKET_SETTINGS_GUARANTEE_ENCRYPTION};
    if (WSASetSocketSecurity(s, &settings, sizeof settings, NULL, NULL) == SOCKET_ERROR)
        return fail("WSASetSocketSecurity");

    /* As Microsoft's sample: a zeroed struct of sizeof + 2 * characters, the character count stored. */
    size_t n = strlen(argv[3]);
    size_t ptn_len = sizeof(SOCKET_PEER_TARGET_NAME) + n * sizeof(char16_t);
    SOCKET_PEER_TARGET_NAME *ptn = calloc(1, ptn_len);
    ptn->SecurityProtocol = settings.SecurityProtocol;
    ptn->PeerTargetNameStringLen = (uint32_t)n;
    for (size_t i = 0; i < n; i++) ptn->AllStrings[i] = (char16_t)(unsigned char)argv[3][i];
    if (WSASetSocketPeerTargetName(s, ptn, (uint32_t)ptn_len, NULL, NULL) == SOCKET_ERROR)
        return fail("WSASetSocketPeerTargetName");
    free(ptn);

    if (WSAConnect(s, (struct sockaddr *)&server, (int)server_len, NULL, NULL, NULL, NULL) == SOCKET_ERROR)
        return fail("WSAConnect");

    /* Right after connect, as the documentation says: what protects this connection now. */
    uint32_t info_len = 0;
    if (WSAQuerySocketSecurity(s, NULL, 0, NULL, &info_len, NULL, NULL) != SOCKET_ERROR || WSAGetLastError() != WSAEFAULT)
        return fail("WSAQuerySocketSecurity size probe");
    SOCKET_SECURITY_QUERY_INFO *info = malloc(info_len);
    if (WSAQuerySocketSecurity(s, NULL, 0, info, &info_len, NULL, NULL) == SOCKET_ERROR)
        return fail("WSAQuerySocketSecurity");
    printf("query: size %u flags 0x%x%s%s\n", info_len, info->Flags,
           (info->Flags & SOCKET_INFO_CONNECTION_SECURED) ? " SECURED" : "",
           (info->Flags & SOCKET_INFO_CONNECTION_ENCRYPTED) ? " ENCRYPTED" : "");
    int ok = (info->Flags & SOCKET_INFO_CONNECTION_SECURED) && (info->Flags & SOCKET_INFO_CONNECTION_ENCRYPTED);
    if (send(s, "12345678", 8, 0) != 8) return 3;
    char reply[256];
    ssize_t got = recv(s, reply, sizeof reply - 1, MSG_WAITALL);
    if (got <= 0) return 3;
    reply[got] = 0;
    printf("received: %s\n", reply);

    free(info);
    close(s);
    return ok ? 0 : 4;
}

/*
 * Exit drain: connects secured (WSAConnect, peer target name), writes COUNT bytes of a pattern, closes and exits at
 * once (its send buffer holds all of it). What its kernel still had to send must arrive: the keying daemon keeps the orphaned socket's SAs.
 * Usage: drain_client SERVER-ADDRESS PORT TARGET-NAME COUNT
 */
#include "winsock_secure_socket.h"
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc != 5) return 64;
    struct sockaddr_in server = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(argv[2]))};
    if (inet_pton(AF_INET, argv[1], &server.sin_addr) != 1) return 64;
    SOCKET s = socket(AF_INET, SOCK_STREAM, IPPROTO_TCP);
    /* Room for everything at once: send() returns, and the kernel is left to deliver it after the exit. */
    int room = 1 << 20;
    setsockopt(s, SOL_SOCKET, SO_SNDBUF, &room, sizeof room);
    SOCKET_SECURITY_SETTINGS settings = {SOCKET_SECURITY_PROTOCOL_DEFAULT, SOCKET_SETTINGS_GUARANTEE_ENCRYPTION};
    if (WSASetSocketSecurity(s, &settings, sizeof settings, NULL, NULL) == SOCKET_ERROR) {
        fprintf(stderr, "WSASetSocketSecurity: %d\n", WSAGetLastError());
        return 2;
    }
    size_t n = strlen(argv[3]);
    size_t length = sizeof(SOCKET_PEER_TARGET_NAME) + n * sizeof(char16_t);
    SOCKET_PEER_TARGET_NAME *name = calloc(1, length);
    name->SecurityProtocol = settings.SecurityProtocol;
    name->PeerTargetNameStringLen = (uint32_t)n;
    for (size_t i = 0; i < n; i++) name->AllStrings[i] = (char16_t)(unsigned char)argv[3][i];
    if (WSASetSocketPeerTargetName(s, name, (uint32_t)length, NULL, NULL) == SOCKET_ERROR) return 2;
    free(name);
    if (WSAConnect(s, (struct sockaddr *)&server, sizeof server, NULL, NULL, NULL, NULL) == SOCKET_ERROR) {
        fprintf(stderr, "WSAConnect: %d\n", WSAGetLastError());
        return 2;
    }
    size_t count = (size_t)atol(argv[4]);
    unsigned char *data = malloc(count);
    for (size_t i = 0; i < count; i++) data[i] = (unsigned char)(i * 7 + 3);
    size_t sent = 0;
    while (sent < count) {
        ssize_t rc = send(s, data + sent, count - sent, 0);
        if (rc <= 0) return 3;
        sent += (size_t)rc;
    }
    close(s);
    printf("sent %zu and closed\n", sent);
    return 0;
}

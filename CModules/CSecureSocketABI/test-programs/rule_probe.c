/*
 * Admission rules: one secure-socket step as the keying daemon's client, printing the Winsock error it got
 * ("MODE: 0" on success, else "MODE: <WSAGetLastError()>").
 * Usage: rule_probe insecure                        WSASetSocketSecurity with ALLOW_INSECURE
 *        rule_probe name TARGET-NAME                WSASetSocketPeerTargetName after WSASetSocketSecurity
 *        rule_probe connect SERVER PORT [TARGET]    WSAConnect (with the name when given), one byte echoed
 *        rule_probe listen ADDRESS PORT SECONDS     a secured listener that accepts for SECONDS, echoing
 */
#include "winsock_secure_socket.h"
#include <arpa/inet.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static int report(const char *mode, int rc) {
    int code = rc == SOCKET_ERROR ? WSAGetLastError() : 0;
    printf("%s: %d\n", mode, code);
    fflush(stdout);
    return code == 0 ? 0 : 1;
}

static int set_name(SOCKET s, const char *target) {
    size_t n = strlen(target);
    size_t length = sizeof(SOCKET_PEER_TARGET_NAME) + n * sizeof(char16_t);
    SOCKET_PEER_TARGET_NAME *name = calloc(1, length);
    name->SecurityProtocol = SOCKET_SECURITY_PROTOCOL_DEFAULT;
    name->PeerTargetNameStringLen = (uint32_t)n;
    for (size_t i = 0; i < n; i++) name->AllStrings[i] = (char16_t)(unsigned char)target[i];
    int rc = WSASetSocketPeerTargetName(s, name, (uint32_t)length, NULL, NULL);
    free(name);
    return rc;
}

static int address(const char *text, const char *port, struct sockaddr_in *out) {
    *out = (struct sockaddr_in){.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(port))};
    return inet_pton(AF_INET, text, &out->sin_addr) == 1;
}

int main(int argc, char **argv) {
    if (argc < 2) return 64;
    SOCKET s = socket(AF_INET, SOCK_STREAM, IPPROTO_TCP);
    if (strcmp(argv[1], "insecure") == 0) {
        SOCKET_SECURITY_SETTINGS settings = {SOCKET_SECURITY_PROTOCOL_DEFAULT, SOCKET_SETTINGS_ALLOW_INSECURE};
        return report("insecure", WSASetSocketSecurity(s, &settings, sizeof settings, NULL, NULL));
    }
    if (WSASetSocketSecurity(s, NULL, 0, NULL, NULL) == SOCKET_ERROR) return report("set-security", SOCKET_ERROR);
    if (strcmp(argv[1], "name") == 0 && argc == 3) return report("name", set_name(s, argv[2]));
    if (strcmp(argv[1], "connect") == 0 && (argc == 4 || argc == 5)) {
        struct sockaddr_in server;
        if (!address(argv[2], argv[3], &server)) return 64;
        if (argc == 5 && set_name(s, argv[4]) == SOCKET_ERROR) return report("name", SOCKET_ERROR);
        int rc = WSAConnect(s, (struct sockaddr *)&server, sizeof server, NULL, NULL, NULL, NULL);
        if (rc == SOCKET_ERROR) return report("connect", rc);
        char byte = 'x', back = 0;
        struct timeval bound = {.tv_sec = 5};
        setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &bound, sizeof bound);
        if (send(s, &byte, 1, 0) != 1 || recv(s, &back, 1, 0) != 1 || back != byte) {
            printf("connect: no echo\n");
            return 3;
        }
        return report("connect", 0);
    }
    if (strcmp(argv[1], "listen") == 0 && argc == 5) {
        struct sockaddr_in local;
        if (!address(argv[2], argv[3], &local)) return 64;
        if (bind(s, (struct sockaddr *)&local, sizeof local) != 0 || listen(s, 4) != 0) return 3;
        printf("listening\n");
        fflush(stdout);
        time_t end = time(NULL) + atoi(argv[4]);
        while (time(NULL) < end) {
            struct pollfd p = {.fd = s, .events = POLLIN};
            if (poll(&p, 1, 200) <= 0) continue;
            SOCKET c = accept(s, NULL, NULL);
            if (c < 0) continue;
            char byte;
            if (recv(c, &byte, 1, 0) == 1) send(c, &byte, 1, 0);
            close(c);
        }
        return 0;
    }
    return 64;
}

/*
 * Daemon restart: a client whose keying daemon is killed under an established connection. It connects secured
 * (WSAConnect, peer target name), then echoes a marker every 100 ms until GO-FILE exists (the test kills the
 * daemon and starts the next one meanwhile), then connects again (through the next daemon), echoes on both
 * connections, queries both, closes both and exits 0 if every echo came back.
 * Usage: restart_client SERVER-ADDRESS PORT TARGET-NAME MARKER GO-FILE
 */
#include "winsock_secure_socket.h"
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <unistd.h>

static struct sockaddr_in server;
static const char *target;
static const char *marker;

static SOCKET secured_connection(void) {
    SOCKET s = socket(AF_INET, SOCK_STREAM, IPPROTO_TCP);
    SOCKET_SECURITY_SETTINGS settings = {SOCKET_SECURITY_PROTOCOL_DEFAULT, SOCKET_SETTINGS_GUARANTEE_ENCRYPTION};
    if (WSASetSocketSecurity(s, &settings, sizeof settings, NULL, NULL) == SOCKET_ERROR) {
        fprintf(stderr, "WSASetSocketSecurity: %d\n", WSAGetLastError());
        return -1;
    }
    size_t n = strlen(target);
    size_t length = sizeof(SOCKET_PEER_TARGET_NAME) + n * sizeof(char16_t);
    SOCKET_PEER_TARGET_NAME *name = calloc(1, length);
    name->SecurityProtocol = settings.SecurityProtocol;
    name->PeerTargetNameStringLen = (uint32_t)n;
    for (size_t i = 0; i < n; i++) name->AllStrings[i] = (char16_t)(unsigned char)target[i];
    int named = WSASetSocketPeerTargetName(s, name, (uint32_t)length, NULL, NULL);
    free(name);
    if (named == SOCKET_ERROR) {
        fprintf(stderr, "WSASetSocketPeerTargetName: %d\n", WSAGetLastError());
        return -1;
    }
    if (WSAConnect(s, (struct sockaddr *)&server, sizeof server, NULL, NULL, NULL, NULL) == SOCKET_ERROR) {
        fprintf(stderr, "WSAConnect: %d\n", WSAGetLastError());
        return -1;
    }
    struct timeval bound = {.tv_sec = 5};
    setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &bound, sizeof bound);
    return s;
}

/* Sends "MARKER-label-n" and reads it back; 1 if it came back whole. */
static int echoes(SOCKET s, const char *label, int n) {
    char out[128], in[128];
    int length = snprintf(out, sizeof out, "%s-%s-%d", marker, label, n);
    if (send(s, out, (size_t)length, 0) != length) return 0;
    int got = 0;
    while (got < length) {
        ssize_t rc = recv(s, in + got, (size_t)(length - got), 0);
        if (rc <= 0) return 0;
        got += (int)rc;
    }
    return memcmp(in, out, (size_t)length) == 0;
}

static unsigned query(SOCKET s) {
    SOCKET_SECURITY_QUERY_INFO info;
    uint32_t length = sizeof info;
    if (WSAQuerySocketSecurity(s, NULL, 0, &info, &length, NULL, NULL) == SOCKET_ERROR) return 0xffffffffu;
    return info.Flags;
}

int main(int argc, char **argv) {
    if (argc != 6) return 64;
    server = (struct sockaddr_in){.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(argv[2]))};
    if (inet_pton(AF_INET, argv[1], &server.sin_addr) != 1) return 64;
    target = argv[3];
    marker = argv[4];
    SOCKET first = secured_connection();
    if (first == -1) return 2;
    if (!echoes(first, "before", 0)) return 3;
    printf("first connection echoes\n");
    fflush(stdout);
    int rounds = 0, lost = 0;
    for (int i = 0; i < 1200 && access(argv[5], F_OK) != 0; i++) {
        if (!echoes(first, "while", i)) lost++;
        rounds++;
        usleep(100000);
    }
    printf("echoed %d of %d while the daemon was restarted\n", rounds - lost, rounds);
    fflush(stdout);
    SOCKET second = secured_connection();
    if (second == -1) return 4;
    int after = echoes(first, "after", 0) + echoes(second, "after", 1);
    printf("after the restart: %d of 2 echo; query flags: first %#x, second %#x\n", after, query(first), query(second));
    fflush(stdout);
    close(second);
    close(first);
    return lost == 0 && after == 2 ? 0 : 5;
}

/*
 * Exit drain: a secured listener whose one connection is read slowly (1 KiB every 20 ms, a small receive buffer),
 * so the client's kernel still holds most of what it wrote when the client exits. Prints how many bytes arrived
 * and whether they are the pattern drain_client writes. Usage: slow_server ADDRESS PORT
 */
#include "winsock_secure_socket.h"
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc != 3) return 64;
    struct sockaddr_in address = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(argv[2]))};
    if (inet_pton(AF_INET, argv[1], &address.sin_addr) != 1) return 64;
    SOCKET listener = socket(AF_INET, SOCK_STREAM, IPPROTO_TCP);
    if (WSASetSocketSecurity(listener, NULL, 0, NULL, NULL) == SOCKET_ERROR) {
        fprintf(stderr, "WSASetSocketSecurity: %d\n", WSAGetLastError());
        return 2;
    }
    int small = 4096;
    setsockopt(listener, SOL_SOCKET, SO_RCVBUF, &small, sizeof small);
    if (bind(listener, (struct sockaddr *)&address, sizeof address) != 0 || listen(listener, 4) != 0) return 3;
    printf("listening\n");
    fflush(stdout);
    SOCKET s = accept(listener, NULL, NULL);
    if (s < 0) return 3;
    size_t total = 0, wrong = 0;
    unsigned char buffer[1024];
    for (;;) {
        ssize_t rc = recv(s, buffer, sizeof buffer, 0);
        if (rc <= 0) break;
        for (ssize_t i = 0; i < rc; i++)
            if (buffer[i] != (unsigned char)((total + (size_t)i) * 7 + 3)) wrong++;
        total += (size_t)rc;
        usleep(20000);
    }
    printf("received %zu bytes, %zu wrong\n", total, wrong);
    close(s);
    close(listener);
    return 0;
}

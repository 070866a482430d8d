/*
 * Daemon restart: a secured listener that echoes every connection it accepts (up to 16 at once, one poll loop),
 * until it is terminated. Usage: echo_server ADDRESS PORT
 */
#include "winsock_secure_socket.h"
#include <arpa/inet.h>
#include <poll.h>
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
    if (bind(listener, (struct sockaddr *)&address, sizeof address) != 0 || listen(listener, 16) != 0) return 3;
    printf("listening\n");
    fflush(stdout);
    struct pollfd fds[17] = {{.fd = listener, .events = POLLIN}};
    nfds_t count = 1;
    for (;;) {
        if (poll(fds, count, -1) < 0) return 3;
        for (nfds_t i = count; i-- > 1;) {
            if (!(fds[i].revents & (POLLIN | POLLHUP | POLLERR))) continue;
            char buffer[2048];
            ssize_t rc = recv(fds[i].fd, buffer, sizeof buffer, 0);
            if (rc <= 0 || send(fds[i].fd, buffer, (size_t)rc, 0) != rc) {
                close(fds[i].fd);
                fds[i] = fds[--count];
            }
        }
        if ((fds[0].revents & POLLIN) && count < 17) {
            SOCKET s = accept(listener, NULL, NULL);
            if (s < 0) continue;
            fds[count++] = (struct pollfd){.fd = s, .events = POLLIN};
            printf("accepted %d\n", (int)count - 1);
            fflush(stdout);
        }
    }
}

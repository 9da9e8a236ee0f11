/*
 * A parent-instance program written for AWS Nitro Enclaves, with nothing of Cloister in it:
 * it dials an enclave over AF_VSOCK and listens for one as cid 3.
 *
 * usage: vsock_parent CID PORT LISTEN_PORT
 *
 * Connects to (CID, PORT), sends "hello", prints "reply LINE"; then listens on LISTEN_PORT
 * (printing "listening"), accepts one connection, prints "peer CID PORT", reads one line and
 * answers "echo:LINE". Exits 0 when all of it worked.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <linux/vm_sockets.h>

static int read_line(int fd, char *buf, size_t cap)
{
	size_t n = 0;
	while (n + 1 < cap) {
		char c;
		ssize_t r = read(fd, &c, 1);
		if (r <= 0)
			return -1;
		if (c == '\n')
			break;
		buf[n++] = c;
	}
	buf[n] = 0;
	return (int)n;
}

int main(int argc, char **argv)
{
	if (argc != 4)
		return 2;
	unsigned cid = (unsigned)atoi(argv[1]);
	unsigned port = (unsigned)atoi(argv[2]);
	unsigned listen_port = (unsigned)atoi(argv[3]);

	int s = socket(AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (s < 0) {
		printf("socket: %s\n", strerror(errno));
		return 1;
	}
	struct sockaddr_vm a = {.svm_family = AF_VSOCK, .svm_cid = cid, .svm_port = port};
	if (connect(s, (struct sockaddr *)&a, sizeof a) < 0) {
		printf("connect: %s\n", strerror(errno));
		return 1;
	}
	char line[128];
	if (write(s, "hello\n", 6) != 6 || read_line(s, line, sizeof line) < 0) {
		printf("exchange: %s\n", strerror(errno));
		return 1;
	}
	printf("reply %s\n", line);
	close(s);

	int l = socket(AF_VSOCK, SOCK_STREAM, 0);
	struct sockaddr_vm any = {.svm_family = AF_VSOCK, .svm_cid = VMADDR_CID_ANY, .svm_port = listen_port};
	if (l < 0 || bind(l, (struct sockaddr *)&any, sizeof any) < 0 || listen(l, 4) < 0) {
		printf("listen: %s\n", strerror(errno));
		return 1;
	}
	printf("listening\n");
	fflush(stdout);
	struct sockaddr_vm peer;
	socklen_t len = sizeof peer;
	int c = accept(l, (struct sockaddr *)&peer, &len);
	if (c < 0) {
		printf("accept: %s\n", strerror(errno));
		return 1;
	}
	printf("peer %u %u\n", peer.svm_cid, peer.svm_port);
	if (read_line(c, line, sizeof line) < 0) {
		printf("read: %s\n", strerror(errno));
		return 1;
	}
	char out[160];
	int n = snprintf(out, sizeof out, "echo:%s\n", line);
	if (write(c, out, (size_t)n) != n)
		return 1;
	close(c);
	close(l);
	return 0;
}

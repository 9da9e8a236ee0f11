/*
 * An enclave program written for AWS Nitro Enclaves, with nothing of Cloister in it: plain
 * AF_VSOCK sockets, /dev/vsock's IOCTL_VM_SOCKETS_GET_LOCAL_CID and /dev/nsm's ioctl.
 *
 * usage: vsock_app REPORT_PORT LISTEN_PORT
 *
 * It connects to the parent (cid 3) on REPORT_PORT and writes one line per check there
 * ("ok NAME DETAIL" or "FAIL NAME DETAIL"), then "ready CID" and serves LISTEN_PORT: a
 * non-blocking listener waited on with epoll, then a blocking listener on LISTEN_PORT + 1
 * (each echoes one line back as "echo:LINE"), then "done".
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>
#include <linux/vm_sockets.h>

#define NSM_IOCTL_RAW 0xC0200A00UL

struct nsm_raw {
	struct iovec request;
	struct iovec response;
};

static int report = -1;

static void say(int ok, const char *name, const char *fmt, ...)
{
	char line[512];
	char detail[400];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(detail, sizeof detail, fmt, ap);
	va_end(ap);
	int n = snprintf(line, sizeof line, "%s %s %s\n", ok ? "ok" : "FAIL", name, detail);
	if (report >= 0 && write(report, line, (size_t)n) != n)
		_exit(3);
	fputs(line, stderr);
}

static int vsock_connect(unsigned cid, unsigned port, int flags)
{
	int fd = socket(AF_VSOCK, SOCK_STREAM | flags, 0);
	if (fd < 0)
		return -1;
	struct sockaddr_vm a = {.svm_family = AF_VSOCK, .svm_cid = cid, .svm_port = port};
	if (connect(fd, (struct sockaddr *)&a, sizeof a) < 0) {
		int e = errno;
		close(fd);
		errno = e;
		return -1;
	}
	return fd;
}

static int vsock_listen(unsigned port, int flags)
{
	int fd = socket(AF_VSOCK, SOCK_STREAM | flags, 0);
	if (fd < 0)
		return -1;
	struct sockaddr_vm a = {.svm_family = AF_VSOCK, .svm_cid = VMADDR_CID_ANY, .svm_port = port};
	if (bind(fd, (struct sockaddr *)&a, sizeof a) < 0 || listen(fd, 8) < 0) {
		int e = errno;
		close(fd);
		errno = e;
		return -1;
	}
	return fd;
}

/* Reads one line (without its newline) of at most cap-1 bytes. */
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

static void serve_one(int conn, const char *name)
{
	struct sockaddr_vm peer;
	socklen_t len = sizeof peer;
	int ok = getpeername(conn, (struct sockaddr *)&peer, &len) == 0 && peer.svm_family == AF_VSOCK &&
		 peer.svm_cid == 3 && len == sizeof peer;
	say(ok, name, "peer cid %u port %u", peer.svm_cid, peer.svm_port);
	char line[128];
	if (read_line(conn, line, sizeof line) < 0) {
		say(0, name, "read failed: %s", strerror(errno));
		return;
	}
	char out[160];
	int n = snprintf(out, sizeof out, "echo:%s\n", line);
	if (write(conn, out, (size_t)n) != n)
		say(0, name, "write failed: %s", strerror(errno));
	close(conn);
}

static volatile int racing = 1;
static int race_fd = -1;

static void *race_swapper(void *arg)
{
	(void)arg;
	int spare = open("/dev/null", O_RDONLY | O_CLOEXEC);
	while (racing) {
		dup2(spare, race_fd);
		close(race_fd);
	}
	close(spare);
	return NULL;
}

int main(int argc, char **argv)
{
	if (argc != 3)
		return 2;
	unsigned report_port = (unsigned)atoi(argv[1]);
	unsigned listen_port = (unsigned)atoi(argv[2]);

	report = vsock_connect(3, report_port, SOCK_CLOEXEC);
	if (report < 0) {
		fprintf(stderr, "cannot reach the parent: %s\n", strerror(errno));
		return 1;
	}

	/* The socket the program holds is a stream with native addresses reported as vsock. */
	struct sockaddr_vm a;
	socklen_t len = sizeof a;
	int ok = getpeername(report, (struct sockaddr *)&a, &len) == 0 && a.svm_family == AF_VSOCK &&
		 a.svm_cid == 3 && a.svm_port == report_port;
	say(ok, "getpeername", "cid %u port %u", a.svm_cid, a.svm_port);

	unsigned cid = 0;
	int dev = open("/dev/vsock", O_RDONLY | O_CLOEXEC);
	ok = dev >= 0 && ioctl(dev, IOCTL_VM_SOCKETS_GET_LOCAL_CID, &cid) == 0 && cid >= 4;
	say(ok, "local_cid", "%u", cid);

	len = sizeof a;
	ok = getsockname(report, (struct sockaddr *)&a, &len) == 0 && a.svm_cid == cid;
	say(ok, "getsockname", "cid %u port %u", a.svm_cid, a.svm_port);

	int flags = fcntl(report, F_GETFD);
	say(flags >= 0 && (flags & FD_CLOEXEC), "cloexec", "fd flags %d", flags);

	/* Errors as a vsock socket gives them. */
	int fd = socket(AF_VSOCK, SOCK_DGRAM, 0);
	say(fd < 0 && errno == EAFNOSUPPORT, "dgram", "%s", strerror(errno));
	fd = vsock_connect(3, 7699, 0);
	say(fd < 0 && errno == ECONNREFUSED, "refused", "%s", strerror(errno));
	fd = vsock_connect(7, 5000, 0);
	say(fd < 0 && errno == ENETUNREACH, "other_cid", "%s", strerror(errno));

	/* Hostile arguments: errors, never a hang. */
	fd = socket(AF_VSOCK, SOCK_STREAM, 0);
	ok = connect(fd, (struct sockaddr *)8, sizeof(struct sockaddr_vm)) < 0 && errno == EFAULT;
	say(ok, "bad_addr", "%s", strerror(errno));
	ok = getsockname(report, (struct sockaddr *)8, &len) < 0 && errno == EFAULT;
	say(ok, "bad_name", "%s", strerror(errno));
	ok = getsockname(report, (struct sockaddr *)&a, (socklen_t *)8) < 0 && errno == EFAULT;
	say(ok, "bad_len", "%s", strerror(errno));
	struct sockaddr_vm any = {.svm_family = AF_VSOCK, .svm_cid = VMADDR_CID_ANY, .svm_port = 99};
	ok = connect(12345, (struct sockaddr *)&any, sizeof any) < 0 && errno == EBADF;
	say(ok, "bad_fd", "%s", strerror(errno));
	close(fd);

	int nsm = open("/dev/nsm", O_RDWR | O_CLOEXEC);
	ok = nsm >= 0 && ioctl(nsm, NSM_IOCTL_RAW, (void *)8) < 0 && errno == EFAULT;
	say(ok, "nsm_bad_arg", "%s", strerror(errno));
	static uint8_t big[8192];
	static uint8_t resp[16384];
	struct nsm_raw raw = {{big, sizeof big}, {resp, sizeof resp}};
	ok = ioctl(nsm, NSM_IOCTL_RAW, &raw) < 0 && errno == EMSGSIZE;
	say(ok, "nsm_too_big", "%s", strerror(errno));
	raw.request.iov_base = (void *)8;
	raw.request.iov_len = 16;
	ok = ioctl(nsm, NSM_IOCTL_RAW, &raw) < 0 && errno == EFAULT;
	say(ok, "nsm_bad_request", "%s", strerror(errno));
	/* CBOR text "DescribeNSM": answered with a one-entry map. */
	static const char describe[] = "\x6b" "DescribeNSM";
	raw.request.iov_base = (void *)describe;
	raw.request.iov_len = sizeof describe - 1;
	raw.response.iov_len = sizeof resp;
	ok = ioctl(nsm, NSM_IOCTL_RAW, &raw) == 0 && raw.response.iov_len > 0 && resp[0] == 0xa1;
	say(ok, "nsm_describe", "%zu bytes", raw.response.iov_len);

	/* A flood of calls, and descriptors swapped under pending calls. */
	int floods = 0;
	for (int i = 0; i < 2000; i++) {
		int s = socket(AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC, 0);
		if (s >= 0) {
			floods++;
			len = sizeof a;
			getsockname(s, (struct sockaddr *)&a, &len);
			close(s);
		}
	}
	say(floods == 2000, "flood", "%d sockets", floods);
	race_fd = socket(AF_VSOCK, SOCK_STREAM, 0);
	pthread_t t;
	pthread_create(&t, NULL, race_swapper, NULL);
	struct sockaddr_vm refused = {.svm_family = AF_VSOCK, .svm_cid = 3, .svm_port = 7699};
	for (int i = 0; i < 300; i++) {
		connect(race_fd, (struct sockaddr *)&refused, sizeof refused);
		getpeername(race_fd, (struct sockaddr *)&a, &len);
	}
	racing = 0;
	pthread_join(t, NULL);
	fd = vsock_connect(3, 7699, 0);
	say(fd < 0 && errno == ECONNREFUSED, "after_race", "%s", strerror(errno));

	/* Listening: EADDRINUSE, then a non-blocking listener waited on with epoll. */
	int l = vsock_listen(listen_port, SOCK_NONBLOCK | SOCK_CLOEXEC);
	say(l >= 0, "listen", "%s", l >= 0 ? "" : strerror(errno));
	fd = vsock_listen(listen_port, 0);
	say(fd < 0 && errno == EADDRINUSE, "addrinuse", "%s", strerror(errno));
	fd = accept4(l, NULL, NULL, 0);
	say(fd < 0 && errno == EAGAIN, "accept_eagain", "%s", strerror(errno));
	int l2 = vsock_listen(listen_port + 1, 0);
	say(l2 >= 0, "listen2", "%s", l2 >= 0 ? "" : strerror(errno));

	char ready[64];
	int n = snprintf(ready, sizeof ready, "ready %u\n", cid);
	if (write(report, ready, (size_t)n) != n)
		return 1;

	int ep = epoll_create1(EPOLL_CLOEXEC);
	struct epoll_event ev = {.events = EPOLLIN, .data.fd = l};
	epoll_ctl(ep, EPOLL_CTL_ADD, l, &ev);
	struct epoll_event got;
	ok = epoll_wait(ep, &got, 1, 60000) == 1 && got.data.fd == l;
	say(ok, "epoll", "listener readable");
	struct sockaddr_vm peer;
	len = sizeof peer;
	int conn = accept4(l, (struct sockaddr *)&peer, &len, SOCK_CLOEXEC);
	say(conn >= 0 && peer.svm_cid == 3 && len == sizeof peer, "accept4", "peer cid %u port %u",
	    peer.svm_cid, peer.svm_port);
	if (conn >= 0)
		serve_one(conn, "served");

	/* A blocking accept, parked in the supervisor until the parent connects. */
	conn = accept(l2, NULL, NULL);
	say(conn >= 0, "accept_blocking", "%s", conn >= 0 ? "" : strerror(errno));
	if (conn >= 0)
		serve_one(conn, "served2");

	if (write(report, "done\n", 5) != 5)
		return 1;
	close(report);
	return 0;
}

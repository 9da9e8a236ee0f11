"""The shape of AWS's Nitro Enclaves vsock sample, in plain Python: `server PORT` runs in the
enclave (listens on AF_VSOCK, answers each client), `client CID PORT` runs on the parent (in
Cloister: under `cloister exec`) and talks to it.

The server reads one message from each connection, prints it, answers with the message
upper-cased, and closes; `--once` makes it stop after one client. The client connects with a
timeout, sends "Hello, world!", prints everything the server sends back, and closes.
"""

import argparse
import socket
import sys


class VsockStream:
    """Client."""

    def __init__(self, conn_timeout=5):
        self.conn_timeout = conn_timeout

    def connect(self, endpoint):
        self.sock = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
        self.sock.settimeout(self.conn_timeout)
        self.sock.connect(endpoint)

    def send_data(self, data):
        self.sock.sendall(data)
        # The server reads until the client has nothing more to send.
        self.sock.shutdown(socket.SHUT_WR)

    def recv_data(self):
        while True:
            data = self.sock.recv(1024)
            if not data:
                break
            print(data.decode(), end="", flush=True)
        print()

    def disconnect(self):
        self.sock.close()


def client_handler(args):
    client = VsockStream()
    client.connect((args.cid, args.port))
    client.send_data(b"Hello, world!")
    client.recv_data()
    client.disconnect()


class VsockListener:
    """Server."""

    def __init__(self, conn_backlog=128):
        self.conn_backlog = conn_backlog

    def bind(self, port):
        self.sock = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
        self.sock.bind((socket.VMADDR_CID_ANY, port))
        self.sock.listen(self.conn_backlog)

    def serve(self, once):
        while True:
            conn, (cid, port) = self.sock.accept()
            with conn:
                received = b""
                while True:
                    data = conn.recv(1024)
                    if not data:
                        break
                    received += data
                print("from cid %d port %d: %s" % (cid, port, received.decode()), flush=True)
                conn.sendall(b"enclave says: " + received.upper())
            if once:
                return


def server_handler(args):
    server = VsockListener()
    server.bind(args.port)
    print("listening on port %d" % args.port, flush=True)
    server.serve(args.once)


def main():
    parser = argparse.ArgumentParser(prog="vsock-sample")
    parser.add_argument("--version", action="version", version="%(prog)s 0.1.0")
    sub = parser.add_subparsers(title="options", dest="command", required=True)
    client = sub.add_parser("client", description="Connect to a given cid and port.")
    client.add_argument("cid", type=int, help="The remote endpoint CID.")
    client.add_argument("port", type=int, help="The remote endpoint port.")
    client.set_defaults(func=client_handler)
    server = sub.add_parser("server", description="Listen on a given port.")
    server.add_argument("port", type=int, help="The local port to listen on.")
    server.add_argument("--once", action="store_true", help="Stop after one client.")
    server.set_defaults(func=server_handler)
    args = parser.parse_args()
    args.func(args)


if __name__ == "__main__":
    sys.exit(main())

"""An enclave program written only against AWS Nitro Enclaves' interfaces, in plain Python:
it asks /dev/nsm for an attestation document with AWS's ioctl (request 0xC0200A00, a struct of
two iovecs), then sends the document to the parent over socket.AF_VSOCK.

Usage: nsm_attest.py PARENT_PORT NONCE_HEX USER_DATA

The program connects to the parent first; the parent then gets a 4-byte big-endian length and
the document (COSE_Sign1, CBOR), or, when attesting fails, a zero length and the error's text
(which also goes to standard error and the exit status).
"""

import ctypes
import fcntl
import os
import socket
import struct
import sys

NSM_IOCTL = 0xC0200A00  # _IOWR(0x0A, 0, struct { struct iovec request; struct iovec response; })
NSM_RESPONSE_MAX = 0x3000
PARENT_CID = 3


# A minimal CBOR encoder and decoder: what NSM requests and responses use.
def cbor_head(major, n):
    if n < 24:
        return bytes([major << 5 | n])
    for extra, size in ((24, 1), (25, 2), (26, 4), (27, 8)):
        if n < 1 << (8 * size):
            return bytes([major << 5 | extra]) + n.to_bytes(size, "big")
    raise ValueError("too large")


def cbor_encode(value):
    if value is None:
        return b"\xf6"
    if isinstance(value, bool):
        return b"\xf5" if value else b"\xf4"
    if isinstance(value, int) and value >= 0:
        return cbor_head(0, value)
    if isinstance(value, bytes):
        return cbor_head(2, len(value)) + value
    if isinstance(value, str):
        raw = value.encode()
        return cbor_head(3, len(raw)) + raw
    if isinstance(value, list):
        return cbor_head(4, len(value)) + b"".join(cbor_encode(v) for v in value)
    if isinstance(value, dict):
        out = cbor_head(5, len(value))
        for k, v in value.items():
            out += cbor_encode(k) + cbor_encode(v)
        return out
    raise TypeError(type(value))


def cbor_decode(data, pos=0):
    """Decodes one item at `pos`: (value, next position)."""
    first = data[pos]
    major, info = first >> 5, first & 0x1F
    pos += 1
    if major == 7:
        simple = {20: False, 21: True, 22: None, 23: None}
        if info in simple:
            return simple[info], pos
        raise ValueError("unsupported simple value %d" % info)
    if info < 24:
        n = info
    elif info <= 27:
        size = 1 << (info - 24)
        n = int.from_bytes(data[pos : pos + size], "big")
        pos += size
    else:
        raise ValueError("indefinite lengths are not used by the NSM")
    if major == 0:
        return n, pos
    if major == 1:
        return -1 - n, pos
    if major in (2, 3):
        raw = bytes(data[pos : pos + n])
        return (raw if major == 2 else raw.decode()), pos + n
    if major == 4:
        items = []
        for _ in range(n):
            item, pos = cbor_decode(data, pos)
            items.append(item)
        return items, pos
    if major == 5:
        out = {}
        for _ in range(n):
            key, pos = cbor_decode(data, pos)
            out[key], pos = cbor_decode(data, pos)
        return out, pos
    if major == 6:
        return cbor_decode(data, pos)
    raise ValueError("bad major type %d" % major)


class IoVec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


class NsmMessage(ctypes.Structure):
    _fields_ = [("request", IoVec), ("response", IoVec)]


def nsm_call(request):
    """One NSM request through /dev/nsm: the decoded CBOR response."""
    encoded = cbor_encode(request)
    req_buf = ctypes.create_string_buffer(encoded, len(encoded))
    resp_buf = ctypes.create_string_buffer(NSM_RESPONSE_MAX)
    message = NsmMessage(
        IoVec(ctypes.addressof(req_buf), len(encoded)),
        IoVec(ctypes.addressof(resp_buf), NSM_RESPONSE_MAX),
    )
    fd = os.open("/dev/nsm", os.O_RDWR | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, NSM_IOCTL, message)
    finally:
        os.close(fd)
    response, _ = cbor_decode(resp_buf.raw[: message.response.iov_len])
    return response


def attest(nonce, user_data):
    response = nsm_call(
        {"Attestation": {"user_data": user_data, "nonce": nonce, "public_key": None}}
    )
    if "Attestation" not in response:
        raise RuntimeError("the NSM answered %r" % (response,))
    return response["Attestation"]["document"]


def main():
    port, nonce, user_data = int(sys.argv[1]), bytes.fromhex(sys.argv[2]), sys.argv[3].encode()
    with socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM) as s:
        s.connect((PARENT_CID, port))
        try:
            document = attest(nonce, user_data)
        except Exception as e:
            s.sendall(struct.pack(">I", 0) + ("%s: %s" % (type(e).__name__, e)).encode())
            raise
        s.sendall(struct.pack(">I", len(document)) + document)
    print("nsm_attest: sent a document of %d bytes" % len(document), flush=True)


if __name__ == "__main__":
    main()

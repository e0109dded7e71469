#!/usr/bin/env python3
"""Writes the seed corpus of the `session` and `wire` fuzz targets: whole SMTP dialogs
(EHLO/MAIL/RCPT/DATA, BDAT, AUTH PLAIN and LOGIN, STARTTLS, PROXY v1 and v2, pipelined,
and split into pieces at awkward places). Run from anywhere; rewrites seeds/."""
import base64
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))


def b64(s):
    return base64.b64encode(s).decode()


MSG = "MAIL FROM:<a@remote.example> SIZE=60\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n"
BODY = "Subject: seed\r\n\r\n..leading dot\r\nbody\r\n.\r\n"
PROXY_V2 = (b"\r\n\r\n\x00\r\nQUIT\n" + bytes([0x21, 0x11]) + struct.pack(">H", 12)
            + bytes([198, 51, 100, 7, 192, 0, 2, 1]) + struct.pack(">HH", 40000, 25))

# (name, flags, dialog bytes, piece size or None for 255-byte pieces)
DIALOGS = [
    ("plain", 0x00, "EHLO c\r\n" + MSG + BODY + "QUIT\r\n", None),
    ("pipelined", 0x00, "EHLO c\r\n" + MSG + BODY + MSG.replace("alice", "bob") + BODY + "QUIT\r\n", None),
    ("split", 0x00, "EHLO c\r\n" + MSG + BODY + "QUIT\r\n", 3),
    ("helo", 0x00, "HELO c\r\nMAIL FROM:<>\r\nRCPT TO:<postmaster@example.test>\r\nDATA\r\nx\r\n.\r\n", None),
    ("bdat", 0x00, "EHLO c\r\nMAIL FROM:<a@remote.example> BODY=BINARYMIME\r\nRCPT TO:<x@example.test>\r\n"
     "BDAT 5\r\nabcdeBDAT 3 LAST\r\nfghRSET\r\n", None),
    ("bdat_split", 0x00, "EHLO c\r\nMAIL FROM:<a@remote.example>\r\nRCPT TO:<x@example.test>\r\n"
     "BDAT 10 LAST\r\n0123456789QUIT\r\n", 4),
    ("dsn", 0x00, "EHLO c\r\nMAIL FROM:<a@remote.example> RET=HDRS ENVID=QQ314159\r\n"
     "RCPT TO:<x@example.test> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;x+40example.test\r\nDATA\r\nx\r\n.\r\n", None),
    ("utf8", 0x00, "EHLO c\r\nMAIL FROM:<jörg@remote.example> SMTPUTF8 BODY=8BITMIME\r\n"
     "RCPT TO:<jörg@example.test>\r\nDATA\r\nSubject: ü\r\n\r\nü\r\n.\r\n", None),
    ("auth_plain", 0x40, "EHLO c\r\nAUTH PLAIN " + b64(b"\0alice@example.net\0pw") + "\r\n" + MSG + BODY, None),
    ("auth_plain_empty", 0x44, "EHLO c\r\nAUTH PLAIN =\r\n" + b64(b"\0alice\0pw") + "\r\nMAIL FROM:<alice@example.net>\r\n", None),
    ("auth_login", 0x40, "EHLO c\r\nAUTH LOGIN\r\n" + b64(b"alice@example.net") + "\r\n" + b64(b"pw") + "\r\n", None),
    ("auth_login_ir", 0x48, "EHLO c\r\nAUTH LOGIN " + b64(b"alice") + "\r\n*\r\nQUIT\r\n", None),
    ("starttls", 0x00, "EHLO c\r\nSTARTTLS\r\nEHLO c\r\n" + MSG + BODY, None),
    ("starttls_injection", 0x00, "EHLO c\r\nSTARTTLS\r\nRSET\r\nMAIL FROM:<evil@remote.example>\r\n", None),
    ("proxy_v1", 0x80, "PROXY TCP4 198.51.100.7 192.0.2.1 40000 25\r\nEHLO c\r\n" + MSG + BODY, None),
    ("proxy_v1_v6", 0x80, "PROXY TCP6 2001:db8::7 2001:db8::1 40000 25\r\nEHLO c\r\nQUIT\r\n", 5),
    ("proxy_unknown", 0x80, "PROXY UNKNOWN\r\nEHLO c\r\nQUIT\r\n", None),
    ("errors", 0x00, "FOO\r\nMAIL FROM:<a@remote.example>\r\nEHLO c\r\nRCPT TO:<x@example.test>\r\nDATA\r\n"
     "VRFY x\r\nEXPN team\r\nHELP\r\nNOOP\r\nETRN x\r\n", None),
    ("relay", 0x01, "EHLO c\r\nMAIL FROM:<a@remote.example>\r\nRCPT TO:<x@other.example>\r\n"
     "RCPT TO:<x@[192.0.2.1]>\r\nRCPT TO:<\"q u\"@example.test>\r\n", None),
    ("long_line", 0x00, "EHLO " + "c" * 3000 + "\r\nNOOP\r\n", None),
    ("bare_lf", 0x00, "EHLO c\r\n" + MSG + "x\n.\nmore\r\n.\r\n", None),
]


def pieces(data, size):
    size = size or 255
    out = bytearray()
    for i in range(0, len(data), size):
        chunk = data[i:i + size]
        out.append(len(chunk))
        out += chunk
    return bytes(out)


def main():
    sdir = os.path.join(HERE, "seeds", "session")
    wdir = os.path.join(HERE, "seeds", "wire")
    os.makedirs(sdir, exist_ok=True)
    os.makedirs(wdir, exist_ok=True)
    for name, flags, text, size in DIALOGS:
        data = text.encode() if isinstance(text, str) else text
        with open(os.path.join(sdir, name), "wb") as f:
            f.write(bytes([flags]) + pieces(data, size))
    with open(os.path.join(sdir, "proxy_v2"), "wb") as f:
        f.write(bytes([0x80]) + pieces(PROXY_V2 + b"EHLO c\r\nQUIT\r\n", None))
    # The wire target: one command line, or a cut byte and DATA content.
    for i, line in enumerate(["MAIL FROM:<a@b.example> SIZE=10 BODY=8BITMIME SMTPUTF8 RET=FULL ENVID=x",
                              "RCPT TO:<x@y.example> NOTIFY=SUCCESS,DELAY ORCPT=rfc822;x+40y",
                              "BDAT 100 LAST", "AUTH PLAIN AGEAYg==", "EHLO [192.0.2.1]",
                              "RCPT TO:<@relay.example:x@y.example>"]):
        with open(os.path.join(wdir, "cmd%d" % i), "wb") as f:
            f.write(line.encode() + b"\r\n")
    with open(os.path.join(wdir, "data"), "wb") as f:
        f.write(b"\x07line one\r\n..dot\r\n.\r\nafter")


if __name__ == "__main__":
    main()

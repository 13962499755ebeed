#!/usr/bin/env python3
"""A TCP proxy in front of etcd that can make it answer intermittently.

    proxy.py --listen 10.77.0.2:2379 --upstream 127.0.0.1:12379 --control 10.77.0.2:2390

Normal mode passes every connection through. The control port takes one line per connection:
`flaky SEED` or `normal`, answered with `ok`. Entering flaky mode closes every open connection;
from then on each new connection, drawn from a generator seeded with SEED, is
  - passed through, but closed again after 0.5-3 s (so clients keep meeting the faults),
  - held open without an answer for up to 10 s (a timeout),
  - answered with HTTP 503, 500 or 429 (the gateway's JSON error shape) and closed.
"""

import argparse
import random
import socket
import threading
import time

OUTCOMES = (("pass", 0.35), ("hang", 0.2), ("503", 0.15), ("500", 0.15), ("429", 0.15))
REASONS = {"503": "Service Unavailable", "500": "Internal Server Error", "429": "Too Many Requests"}


def address(text):
    host, _, port = text.rpartition(":")
    return host, int(port)


class Proxy:
    def __init__(self, upstream):
        self.upstream = upstream
        self.lock = threading.Lock()
        self.flaky = False
        self.rng = random.Random(0)
        self.open_sockets = set()

    def set_mode(self, flaky, seed):
        with self.lock:
            self.flaky = flaky
            self.rng = random.Random(seed)
            sockets = list(self.open_sockets) if flaky else []
        for sock in sockets:
            close(sock)

    def draw(self):
        with self.lock:
            if not self.flaky:
                return "pass", None
            roll, total = self.rng.random(), 0.0
            for outcome, weight in OUTCOMES:
                total += weight
                if roll < total:
                    break
            return outcome, self.rng.uniform(0.5, 3.0)

    def track(self, sock, add):
        with self.lock:
            (self.open_sockets.add if add else self.open_sockets.discard)(sock)

    def handle(self, client):
        outcome, lifetime = self.draw()
        self.track(client, True)
        try:
            if outcome == "pass":
                self.pass_through(client, lifetime)
            elif outcome == "hang":
                client.settimeout(10)
                try:
                    while client.recv(65536):
                        pass
                except OSError:
                    pass
            else:
                self.answer_error(client, outcome)
        finally:
            self.track(client, False)
            close(client)

    def answer_error(self, client, status):
        client.settimeout(5)
        request = b""
        try:
            while b"\r\n\r\n" not in request:
                chunk = client.recv(65536)
                if not chunk:
                    return
                request += chunk
        except OSError:
            return
        body = (f'{{"error":"injected {status}","code":14,"message":"injected {status}"}}').encode()
        head = (f"HTTP/1.1 {status} {REASONS[status]}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n")
        if status in ("429", "503"):
            head += "Retry-After: 1\r\n"
        try:
            client.sendall(head.encode() + b"\r\n" + body)
        except OSError:
            pass

    def pass_through(self, client, lifetime):
        try:
            upstream = socket.create_connection(self.upstream, timeout=2)
        except OSError:
            return
        upstream.settimeout(None)
        self.track(upstream, True)
        if lifetime is not None:
            timer = threading.Timer(lifetime, lambda: (close(client), close(upstream)))
            timer.daemon = True
            timer.start()
        pump = threading.Thread(target=copy, args=(upstream, client), daemon=True)
        pump.start()
        copy(client, upstream)
        pump.join(timeout=15)
        self.track(upstream, False)
        close(upstream)


def copy(source, destination):
    try:
        while True:
            data = source.recv(65536)
            if not data:
                break
            destination.sendall(data)
    except OSError:
        pass
    finally:
        try:
            destination.shutdown(socket.SHUT_WR)
        except OSError:
            pass


def close(sock):
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass


def listen(addr):
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(addr)
    server.listen(128)
    return server


def serve_control(server, proxy):
    while True:
        conn, _ = server.accept()
        with conn:
            conn.settimeout(5)
            try:
                words = conn.makefile().readline().split()
                if words[:1] == ["flaky"] and len(words) == 2:
                    proxy.set_mode(True, int(words[1]))
                elif words == ["normal"]:
                    proxy.set_mode(False, 0)
                else:
                    conn.sendall(b"error: expected 'flaky SEED' or 'normal'\n")
                    continue
                conn.sendall(b"ok\n")
            except (OSError, ValueError):
                pass


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--listen", type=address, required=True)
    parser.add_argument("--upstream", type=address, required=True)
    parser.add_argument("--control", type=address, required=True)
    args = parser.parse_args()
    proxy = Proxy(args.upstream)
    server = listen(args.listen)
    control = listen(args.control)
    threading.Thread(target=serve_control, args=(control, proxy), daemon=True).start()
    print(f"proxy listening on {args.listen[0]}:{args.listen[1]}", flush=True)
    while True:
        client, _ = server.accept()
        threading.Thread(target=proxy.handle, args=(client,), daemon=True).start()


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        time.sleep(0)

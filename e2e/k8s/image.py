#!/usr/bin/env python3
"""Builds a container image from files of this machine, with no registry and
no base image: one layer holding the given programs (with the shared
libraries `ldd` finds for them), written as an OCI image archive that
`ctr images import` reads. The test cluster's images (the pod sandbox,
herald, Redis) are made this way, since no registry can be reached.

Usage:
  image.py --out FILE.tar --name REF [--name REF ...]
           [--program SRC[:DEST]] ... [--file SRC:DEST] ... [--dir DEST[:MODE[:UID]]] ...
           [--entrypoint JSON] [--cmd JSON] [--env K=V] ... [--user U] [--workdir D]

  --program  an executable; its shared libraries and the dynamic loader come along
  --file     a plain file
  --dir      an empty directory (mode octal, default 755; owner uid, default 0)
  --name     a full image reference, e.g. docker.io/library/herald:e2e (repeat
             for more tags of the same image)
Standard library only; the archive is the same bytes for the same inputs.
"""

import argparse
import gzip
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile


def fail(msg):
    print(f"image.py: error: {msg}", file=sys.stderr)
    sys.exit(1)


def shared_libraries(program):
    """The files `ldd` names for a program: libraries and the loader."""
    out = subprocess.run(["ldd", program], capture_output=True, text=True)
    if out.returncode != 0:
        # A static binary: ldd says "not a dynamic executable".
        return []
    libs = []
    for line in out.stdout.splitlines():
        parts = line.split()
        if "=>" in parts:
            target = parts[parts.index("=>") + 1]
            if target.startswith("/"):
                libs.append(target)
        elif parts and parts[0].startswith("/"):
            libs.append(parts[0])
    return libs


def layer(entries):
    """A reproducible tar of (dest, src or None, mode, uid) entries."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        made = set()

        def parents(path):
            parts = path.strip("/").split("/")[:-1]
            for i in range(1, len(parts) + 1):
                d = "/".join(parts[:i])
                if d not in made:
                    made.add(d)
                    info = tarfile.TarInfo(d)
                    info.type = tarfile.DIRTYPE
                    info.mode = 0o755
                    tar.addfile(info)

        for dest, src, mode, uid in sorted(entries, key=lambda e: e[0]):
            parents(dest)
            name = dest.strip("/")
            info = tarfile.TarInfo(name)
            info.uid = info.gid = uid
            if src is None:
                if name in made:
                    continue
                made.add(name)
                info.type = tarfile.DIRTYPE
                info.mode = mode
                tar.addfile(info)
                continue
            real = os.path.realpath(src)
            with open(real, "rb") as f:
                data = f.read()
            info.size = len(data)
            info.mode = mode if mode is not None else (os.stat(real).st_mode & 0o777)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def blob(tar, data):
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    info = tarfile.TarInfo("blobs/sha256/" + digest.split(":", 1)[1])
    info.size = len(data)
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))
    return {"digest": digest, "size": len(data)}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--name", action="append", required=True)
    p.add_argument("--program", action="append", default=[])
    p.add_argument("--file", action="append", default=[])
    p.add_argument("--dir", action="append", default=[])
    p.add_argument("--entrypoint")
    p.add_argument("--cmd")
    p.add_argument("--env", action="append", default=[])
    p.add_argument("--user")
    p.add_argument("--workdir")
    a = p.parse_args()

    entries = {}
    for spec in a.program:
        src, _, dest = spec.partition(":")
        if not os.access(src, os.X_OK):
            fail(f"{src} is not an executable file")
        entries[dest or src] = (dest or src, src, 0o755, 0)
        for lib in shared_libraries(src):
            entries[lib] = (lib, lib, 0o755, 0)
    for spec in a.file:
        src, sep, dest = spec.partition(":")
        if not sep or not os.path.isfile(src):
            fail(f"--file {spec}: expected SRC:DEST with SRC an existing file")
        entries[dest] = (dest, src, 0o644, 0)
    for spec in a.dir:
        dest, *rest = spec.split(":")
        mode = int(rest[0], 8) if rest else 0o755
        uid = int(rest[1]) if len(rest) > 1 else 0
        entries[dest] = (dest, None, mode, uid)

    raw = layer(entries.values())
    # mtime 0: the same inputs give the same compressed bytes.
    gz = gzip.compress(raw, compresslevel=1, mtime=0)
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(raw).hexdigest()]},
    }
    if a.entrypoint:
        config["config"]["Entrypoint"] = json.loads(a.entrypoint)
    if a.cmd:
        config["config"]["Cmd"] = json.loads(a.cmd)
    if a.env:
        config["config"]["Env"] = a.env
    if a.user:
        config["config"]["User"] = a.user
    if a.workdir:
        config["config"]["WorkingDir"] = a.workdir

    with tarfile.open(a.out, "w", format=tarfile.PAX_FORMAT) as tar:
        layer_desc = blob(tar, gz)
        config_desc = blob(tar, json.dumps(config, sort_keys=True).encode())
        manifest = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **config_desc},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", **layer_desc}],
        }
        manifest_desc = blob(tar, json.dumps(manifest, sort_keys=True).encode())
        index = {
            "schemaVersion": 2,
            "manifests": [
                {
                    "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    **manifest_desc,
                    "annotations": {
                        "io.containerd.image.name": name,
                        "org.opencontainers.image.ref.name": name.rsplit(":", 1)[-1],
                    },
                }
                for name in a.name
            ],
        }
        for fname, data in [
            ("oci-layout", json.dumps({"imageLayoutVersion": "1.0.0"}).encode()),
            ("index.json", json.dumps(index, sort_keys=True).encode()),
        ]:
            info = tarfile.TarInfo(fname)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    print(f"image.py: {', '.join(a.name)}: {len(entries)} files, {len(gz) // 1024} KiB", file=sys.stderr)


if __name__ == "__main__":
    main()

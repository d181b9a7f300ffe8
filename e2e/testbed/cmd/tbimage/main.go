// Command tbimage builds the test bed's container images as single-layer Docker archives (the
// format `docker save` writes and `ctr images import` reads), without a registry or a daemon.
//
// What goes into pgwarden's images comes from e2e/testbed/images.conf, the same list the
// top-level Dockerfile follows:
//
//   - instance: Debian's postgresql-15 (and -client-15) files under PG_BIN_DIR's tree and the
//     share dir, every library they link (found with ldd), /bin/sh, time zones and the C.UTF-8
//     locale, a passwd/group with the postgres user, and pgwarden at PGWARDEN_PATH as entrypoint.
//   - operator: pgwarden alone, entrypoint `pgwarden operator`.
//   - pause: the test bed's sandbox image (tbapp as /pause).
//   - app: the self-test's workload and local-path-provisioner's helper (tbapp).
//
// Usage: tbimage -spec images.conf -image instance -pgwarden bin/pgwarden -o out.tar
package main

import (
	"archive/tar"
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strings"
	"time"

	"github.com/pgwarden/pgwarden/e2e/testbed/internal/imagespec"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintf(os.Stderr, "tbimage: %v\n", err)
		os.Exit(1)
	}
}

func run() error {
	specPath := flag.String("spec", "e2e/testbed/images.conf", "image spec (images.conf)")
	image := flag.String("image", "", "instance, operator, pause or app")
	pgwarden := flag.String("pgwarden", "bin/pgwarden", "pgwarden binary (instance, operator)")
	tbapp := flag.String("tbapp", "", "tbapp binary (pause, app)")
	out := flag.String("o", "", "output archive")
	flag.Parse()
	if *out == "" {
		return errors.New("-o is required")
	}
	spec, err := imagespec.Load(*specPath)
	if err != nil {
		return err
	}
	var img *imageDef
	switch *image {
	case "instance":
		img, err = instanceImage(spec, *pgwarden)
	case "operator":
		img, err = operatorImage(spec, *pgwarden)
	case "pause", "app":
		if *tbapp == "" {
			return fmt.Errorf("-tbapp is required for %s", *image)
		}
		img, err = tbappImage(spec, *image, *tbapp)
	default:
		return fmt.Errorf("unknown -image %q", *image)
	}
	if err != nil {
		return fmt.Errorf("cannot assemble %s image: %w", *image, err)
	}
	if err := img.write(*out); err != nil {
		return fmt.Errorf("cannot write %s image: %w", *image, err)
	}
	return nil
}

// imageDef is one image: its tag, config and the files of its single layer.
type imageDef struct {
	tag        string
	user       string
	env        []string
	entrypoint []string
	ports      []string
	layer      *layer
}

func instanceImage(spec imagespec.Spec, pgwarden string) (*imageDef, error) {
	l := newLayer()
	major := spec["PG_MAJOR"]
	uid, gid, err := ids(spec["INSTANCE_USER"])
	if err != nil {
		return nil, err
	}
	// Debian's PostgreSQL: the binaries' tree and the share dir, no docs, no JIT (libLLVM alone
	// would triple the image).
	files, err := dpkgFiles("postgresql-"+major, "postgresql-client-"+major)
	if err != nil {
		return nil, err
	}
	libRoot := path.Dir(spec["PG_BIN_DIR"]) // /usr/lib/postgresql/15
	share := "/usr/share/postgresql/" + major
	for _, f := range files {
		if !strings.HasPrefix(f, libRoot+"/") && !strings.HasPrefix(f, share+"/") {
			continue
		}
		if strings.HasPrefix(f, share+"/man/") || strings.Contains(f, "/lib/bitcode") || strings.Contains(f, "llvmjit") {
			continue
		}
		fi, err := os.Lstat(f)
		if err != nil || fi.IsDir() {
			continue
		}
		if err := l.hostPath(f); err != nil {
			return nil, err
		}
	}
	if _, err := os.Stat(spec["PG_BIN_DIR"] + "/postgres"); err != nil {
		return nil, fmt.Errorf("postgresql-%s is not installed (apt-get install postgresql-%s postgresql-client-%s): %w", major, major, major, err)
	}
	// initdb and archive commands run through /bin/sh; initdb lists locales with locale(1);
	// time zones and the C.UTF-8 locale.
	for _, p := range []string{"/bin/sh", "/usr/bin/locale", "/usr/share/zoneinfo", "/usr/lib/locale/C.utf8"} {
		if err := l.hostTree(p); err != nil {
			return nil, err
		}
	}
	if err := l.addLibraries(); err != nil {
		return nil, err
	}
	name, home := spec["INSTANCE_USER_NAME"], spec["INSTANCE_HOME"]
	l.data("/etc/passwd", fmt.Sprintf("root:x:0:0:root:/root:/bin/sh\n%s:x:%d:%d:PostgreSQL administrator:%s:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n", name, uid, gid, home), 0o644)
	l.data("/etc/group", fmt.Sprintf("root:x:0:\n%s:x:%d:\nnogroup:x:65534:\n", name, gid), 0o644)
	l.data("/etc/nsswitch.conf", "passwd: files\ngroup: files\nhosts: files dns\n", 0o644)
	// As in the official image: the socket dir and the data volume's parent, writable by postgres.
	l.dir("/tmp", 0o1777|fs.ModeSticky, 0, 0)
	l.dir("/run", 0o755, 0, 0)
	l.symlink("/var/run", "/run")
	l.dir("/run/postgresql", 0o3777|fs.ModeSetgid|fs.ModeSticky, uid, gid)
	l.dir(home, 0o755, uid, gid)
	l.dir(path.Dir(spec["PGDATA"]), 0o777, uid, gid)
	for _, d := range []string{"/dev", "/proc", "/sys", "/root"} {
		l.dir(d, 0o755, 0, 0)
	}
	if err := l.file(spec["PGWARDEN_PATH"], pgwarden, 0o755); err != nil {
		return nil, fmt.Errorf("cannot add pgwarden (run `make build` first): %w", err)
	}
	env := []string{"PATH=/usr/local/bin:" + spec["PG_BIN_DIR"] + ":/usr/bin:/bin", "LANG=C.UTF-8"}
	for _, kv := range spec.InstanceEnv() {
		env = append(env, kv[0]+"="+kv[1])
	}
	return &imageDef{tag: spec["INSTANCE_IMAGE"], user: spec["INSTANCE_USER"], env: env,
		entrypoint: spec.Fields("INSTANCE_ENTRYPOINT"), ports: spec.Fields("INSTANCE_PORTS"), layer: l}, nil
}

func operatorImage(spec imagespec.Spec, pgwarden string) (*imageDef, error) {
	l := newLayer()
	l.dir("/tmp", 0o1777|fs.ModeSticky, 0, 0)
	if err := l.file(spec["PGWARDEN_PATH"], pgwarden, 0o755); err != nil {
		return nil, fmt.Errorf("cannot add pgwarden (run `make build` first): %w", err)
	}
	return &imageDef{tag: spec["OPERATOR_IMAGE"], user: spec["OPERATOR_USER"],
		env:        []string{"PATH=/usr/local/bin:/usr/bin:/bin"},
		entrypoint: spec.Fields("OPERATOR_ENTRYPOINT"), ports: spec.Fields("OPERATOR_PORTS"), layer: l}, nil
}

func tbappImage(spec imagespec.Spec, which, tbapp string) (*imageDef, error) {
	l := newLayer()
	l.dir("/tmp", 0o1777|fs.ModeSticky, 0, 0)
	if which == "pause" {
		if err := l.file("/pause", tbapp, 0o755); err != nil {
			return nil, err
		}
		return &imageDef{tag: spec["PAUSE_IMAGE"], user: "65535:65535", entrypoint: []string{"/pause"}, layer: l}, nil
	}
	for _, p := range []string{"/tbapp", "/local-path-helper", "/pause"} {
		if err := l.file(p, tbapp, 0o755); err != nil {
			return nil, err
		}
	}
	return &imageDef{tag: spec["APP_IMAGE"], user: "0:0", entrypoint: []string{"/tbapp"}, layer: l}, nil
}

func ids(user string) (int, int, error) {
	var uid, gid int
	if _, err := fmt.Sscanf(user, "%d:%d", &uid, &gid); err != nil {
		return 0, 0, fmt.Errorf("user %q is not UID:GID", user)
	}
	return uid, gid, nil
}

func dpkgFiles(pkgs ...string) ([]string, error) {
	out, err := exec.Command("dpkg-query", append([]string{"-L"}, pkgs...)...).Output()
	if err != nil {
		return nil, fmt.Errorf("cannot list the files of %s (are they installed?): %w", strings.Join(pkgs, ", "), err)
	}
	return strings.Fields(string(out)), nil
}

// entry is one file, directory or symlink of the layer.
type entry struct {
	hdr *tar.Header
	src string // host file to copy, for regular files
	buf []byte // content, for generated files
}

// layer collects entries by their path in the image; parents always come before children.
type layer struct {
	entries map[string]*entry
	order   []string
	elf     []string          // host files to run ldd on
	copied  map[string]string // host file -> its first path in the image, for hard links
}

func newLayer() *layer { return &layer{entries: map[string]*entry{}, copied: map[string]string{}} }

func (l *layer) add(p string, e *entry) {
	if _, ok := l.entries[p]; ok {
		return
	}
	l.parents(p)
	e.hdr.Name = strings.TrimPrefix(p, "/")
	if e.hdr.Typeflag == tar.TypeDir {
		e.hdr.Name += "/"
	}
	e.hdr.ModTime = time.Unix(0, 0)
	e.hdr.Format = tar.FormatPAX
	l.entries[p] = e
	l.order = append(l.order, p)
}

func (l *layer) parents(p string) {
	for d := path.Dir(p); d != "/" && d != "."; d = path.Dir(d) {
		if _, ok := l.entries[d]; ok {
			return
		}
		defer l.dir(d, 0o755, 0, 0) // outermost first
	}
}

func (l *layer) dir(p string, mode fs.FileMode, uid, gid int) {
	l.add(p, &entry{hdr: &tar.Header{Typeflag: tar.TypeDir, Mode: tarMode(mode), Uid: uid, Gid: gid}})
}

func (l *layer) symlink(p, target string) {
	l.add(p, &entry{hdr: &tar.Header{Typeflag: tar.TypeSymlink, Linkname: target, Mode: 0o777}})
}

func (l *layer) data(p, content string, mode fs.FileMode) {
	l.add(p, &entry{hdr: &tar.Header{Typeflag: tar.TypeReg, Mode: tarMode(mode), Size: int64(len(content))},
		buf: []byte(content)})
}

// file adds the host file src at p in the image, owned by root.
func (l *layer) file(p, src string, mode fs.FileMode) error {
	fi, err := os.Stat(src)
	if err != nil {
		return err
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("%s is not a regular file", src)
	}
	if first, ok := l.copied[src]; ok && l.entries[first].hdr.Mode == tarMode(mode) {
		// Same mode as the first: some extractors chmod the shared inode to a link's mode.
		l.add(p, &entry{hdr: &tar.Header{Typeflag: tar.TypeLink, Linkname: strings.TrimPrefix(first, "/"), Mode: tarMode(mode)}})
		return nil
	}
	l.copied[src] = p
	l.add(p, &entry{hdr: &tar.Header{Typeflag: tar.TypeReg, Mode: tarMode(mode), Size: fi.Size()}, src: src})
	return nil
}

func tarMode(m fs.FileMode) int64 {
	mode := int64(m.Perm())
	if m&fs.ModeSetuid != 0 {
		mode |= 0o4000
	}
	if m&fs.ModeSetgid != 0 {
		mode |= 0o2000
	}
	if m&fs.ModeSticky != 0 {
		mode |= 0o1000
	}
	return mode
}

// hostPath copies the host path p to the same place in the image. Every symlink on the way
// (like Debian's merged /lib -> usr/lib) is recorded as a symlink and followed.
func (l *layer) hostPath(p string) error { return l.hostPathDepth(filepath.Clean(p), 0) }

func (l *layer) hostPathDepth(p string, depth int) error {
	if depth > 40 {
		return fmt.Errorf("%s: too many levels of symlinks", p)
	}
	parts := strings.Split(strings.TrimPrefix(p, "/"), "/")
	cur := "/"
	for i, part := range parts {
		next := path.Join(cur, part)
		fi, err := os.Lstat(next)
		if err != nil {
			return err
		}
		last := i == len(parts)-1
		switch {
		case fi.Mode()&fs.ModeSymlink != 0:
			target, err := os.Readlink(next)
			if err != nil {
				return err
			}
			l.symlink(next, target)
			if !path.IsAbs(target) {
				target = path.Join(cur, target)
			}
			return l.hostPathDepth(path.Join(append([]string{target}, parts[i+1:]...)...), depth+1)
		case fi.IsDir():
			if _, ok := l.entries[next]; !ok {
				l.dir(next, fi.Mode().Perm()|fi.Mode()&(fs.ModeSticky|fs.ModeSetgid), 0, 0)
			}
		case fi.Mode().IsRegular() && last:
			if _, ok := l.entries[next]; !ok {
				if err := l.file(next, next, fi.Mode()); err != nil {
					return err
				}
				if isELF(next) {
					l.elf = append(l.elf, next)
				}
			}
		case last:
			return nil // sockets, devices: not for an image
		default:
			return fmt.Errorf("%s is not a directory", next)
		}
		cur = next
	}
	return nil
}

// hostTree copies p and, if it is a directory, everything below it.
func (l *layer) hostTree(p string) error {
	if err := l.hostPath(p); err != nil {
		return err
	}
	real, err := filepath.EvalSymlinks(p)
	if err != nil {
		return err
	}
	fi, err := os.Stat(real)
	if err != nil || !fi.IsDir() {
		return err
	}
	return filepath.WalkDir(real, func(q string, _ fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		return l.hostPath(q)
	})
}

func isELF(p string) bool {
	f, err := os.Open(p)
	if err != nil {
		return false
	}
	defer f.Close()
	magic := make([]byte, 4)
	_, err = io.ReadFull(f, magic)
	return err == nil && bytes.Equal(magic, []byte("\x7fELF"))
}

// addLibraries adds every shared library the collected ELF files link, as ldd resolves them
// on this host, until no new ones appear.
func (l *layer) addLibraries() error {
	done := map[string]bool{}
	for len(l.elf) > 0 {
		f := l.elf[0]
		l.elf = l.elf[1:]
		if done[f] {
			continue
		}
		done[f] = true
		libs, err := ldd(f)
		if err != nil {
			return err
		}
		for _, lib := range libs {
			if err := l.hostPath(lib); err != nil {
				return fmt.Errorf("cannot add %s (needed by %s): %w", lib, f, err)
			}
		}
	}
	return nil
}

func ldd(f string) ([]string, error) {
	var out bytes.Buffer
	cmd := exec.Command("ldd", f)
	cmd.Stdout = &out
	cmd.Stderr = &out
	err := cmd.Run()
	text := out.String()
	if strings.Contains(text, "not a dynamic executable") || strings.Contains(text, "statically linked") {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("ldd %s: %v: %s", f, err, text)
	}
	var libs []string
	sc := bufio.NewScanner(&out)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		switch {
		case len(fields) >= 3 && fields[1] == "=>" && fields[2] == "not":
			return nil, fmt.Errorf("%s needs %s, which is not installed", f, fields[0])
		case len(fields) >= 3 && fields[1] == "=>" && path.IsAbs(fields[2]):
			libs = append(libs, fields[2])
		case len(fields) >= 1 && path.IsAbs(fields[0]):
			libs = append(libs, fields[0]) // the dynamic loader
		}
	}
	return libs, nil
}

// write writes the image as a Docker archive: manifest.json, the config, one layer.tar.
func (img *imageDef) write(out string) error {
	tmp, err := os.CreateTemp(filepath.Dir(out), ".layer-*.tar")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	defer tmp.Close()
	h := sha256.New()
	tw := tar.NewWriter(io.MultiWriter(tmp, h))
	for _, p := range img.layer.order {
		e := img.layer.entries[p]
		if err := tw.WriteHeader(e.hdr); err != nil {
			return err
		}
		switch {
		case e.buf != nil:
			if _, err := tw.Write(e.buf); err != nil {
				return err
			}
		case e.src != "":
			if err := copyFile(tw, e.src, e.hdr.Size); err != nil {
				return err
			}
		}
	}
	if err := tw.Close(); err != nil {
		return err
	}
	diffID := "sha256:" + hex.EncodeToString(h.Sum(nil))

	exposed := map[string]struct{}{}
	for _, p := range img.ports {
		exposed[p+"/tcp"] = struct{}{}
	}
	cfg := map[string]any{
		"architecture": "amd64",
		"os":           "linux",
		"created":      "1970-01-01T00:00:00Z",
		"config": map[string]any{
			"User": img.user, "Env": img.env, "Entrypoint": img.entrypoint,
			"WorkingDir": "/", "ExposedPorts": exposed,
		},
		"rootfs":  map[string]any{"type": "layers", "diff_ids": []string{diffID}},
		"history": []map[string]string{{"created": "1970-01-01T00:00:00Z", "created_by": "pgwarden e2e/testbed/cmd/tbimage"}},
	}
	cfgJSON, err := json.Marshal(cfg)
	if err != nil {
		return err
	}
	cfgSum := sha256.Sum256(cfgJSON)
	cfgName := hex.EncodeToString(cfgSum[:]) + ".json"
	layerName := strings.TrimPrefix(diffID, "sha256:") + "/layer.tar"
	manifest, err := json.Marshal([]map[string]any{{"Config": cfgName, "RepoTags": []string{img.tag}, "Layers": []string{layerName}}})
	if err != nil {
		return err
	}

	f, err := os.Create(out + ".tmp")
	if err != nil {
		return err
	}
	defer f.Close()
	aw := tar.NewWriter(f)
	put := func(name string, b []byte) error {
		if err := aw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(b)), ModTime: time.Unix(0, 0)}); err != nil {
			return err
		}
		_, err := aw.Write(b)
		return err
	}
	if err := put(cfgName, cfgJSON); err != nil {
		return err
	}
	fi, err := tmp.Stat()
	if err != nil {
		return err
	}
	if err := aw.WriteHeader(&tar.Header{Name: path.Dir(layerName) + "/", Typeflag: tar.TypeDir, Mode: 0o755, ModTime: time.Unix(0, 0)}); err != nil {
		return err
	}
	if err := aw.WriteHeader(&tar.Header{Name: layerName, Mode: 0o644, Size: fi.Size(), ModTime: time.Unix(0, 0)}); err != nil {
		return err
	}
	if _, err := tmp.Seek(0, io.SeekStart); err != nil {
		return err
	}
	if _, err := io.Copy(aw, tmp); err != nil {
		return err
	}
	if err := put("manifest.json", manifest); err != nil {
		return err
	}
	if err := put("repositories", repositories(img.tag, strings.TrimPrefix(diffID, "sha256:"))); err != nil {
		return err
	}
	if err := aw.Close(); err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "tbimage: %s: %d entries, layer %s, %d MB -> %s\n", img.tag, len(img.layer.order),
		diffID[:19], fi.Size()>>20, out)
	return os.Rename(out+".tmp", out)
}

func repositories(tag, layer string) []byte {
	i := strings.LastIndex(tag, ":")
	b, _ := json.Marshal(map[string]map[string]string{tag[:i]: {tag[i+1:]: layer}})
	return b
}

func copyFile(w io.Writer, src string, size int64) error {
	f, err := os.Open(src)
	if err != nil {
		return err
	}
	defer f.Close()
	n, err := io.Copy(w, io.LimitReader(f, size))
	if err != nil {
		return err
	}
	if n != size {
		return fmt.Errorf("%s changed size while being copied", src)
	}
	return nil
}

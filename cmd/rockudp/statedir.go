package main

import (
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	"github.com/rockudp/rockudp/edp"
	"github.com/rockudp/rockudp/tcprocks"
)

// stateDir is serve's --state-dir: the listener's EDP announcement, kept for the life of the
// directory so that clients' cached announcements stay valid across restarts, and the
// rocks a stopping serve exported, one file each ("rocks/ID.rock", mode 0600), for the
// next serve to import.
type stateDir struct {
	dir string
}

// maxRockState bounds a rock state file (the exported in-flight buffer dominates).
const maxRockState = 256 << 20

// openStateDir creates dir (0700) if needed, checks that it is private, and gives cfg
// (a listener's) the directory's EDP announcement.
func openStateDir(dir string, cfg *tcprocks.Config, log *slog.Logger) (*stateDir, error) {
	if err := privateDir(dir, "--state-dir"); err != nil {
		return nil, err
	}
	if err := privateDir(filepath.Join(dir, "rocks"), "--state-dir"); err != nil {
		return nil, err
	}
	s := &stateDir{dir: dir}
	ann, err := s.announcement()
	if err != nil {
		return nil, err
	}
	cfg.EDP = &edp.Config{Announcement: ann, Logger: log}
	return s, nil
}

// announcement returns the directory's EDP announcement, made on first use.
func (s *stateDir) announcement() ([]byte, error) {
	path := filepath.Join(s.dir, "announcement")
	if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
		if err := edp.WriteAnnouncement(path); err != nil {
			return nil, fmt.Errorf("--state-dir: %w", err)
		}
	}
	a, err := edp.LoadAnnouncement(path)
	if err != nil {
		return nil, fmt.Errorf("--state-dir: %w (remove the file to make a new one; clients then probe again)", err)
	}
	return a, nil
}

// save exports every rock of conns and writes their states. A rock that cannot be exported
// (it is closing) is left alone.
func (s *stateDir) save(conns []*tcprocks.Conn, log *slog.Logger) {
	saved := 0
	for _, c := range conns {
		id := c.ID()
		state, err := c.Export()
		if err != nil {
			log.Warn("cannot export a rock: its client will not resume", "rock", hex.EncodeToString(id[:4]), "err", err)
			continue
		}
		if err := s.write(id, state); err != nil {
			log.Error("cannot save an exported rock: its client will not resume", "rock", hex.EncodeToString(id[:4]), "err", err)
			continue
		}
		saved++
	}
	log.Info("rocks saved for the next serve with this --state-dir", "rocks", saved, "dir", s.dir)
}

// write stores one rock's state, atomically.
func (s *stateDir) write(id [16]byte, state []byte) error {
	dir := filepath.Join(s.dir, "rocks")
	f, err := os.CreateTemp(dir, ".rock-*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name()) // after the rename, a no-op
	if err := f.Chmod(0o600); err != nil {
		f.Close()
		return err
	}
	if _, err := f.Write(state); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(f.Name(), filepath.Join(dir, hex.EncodeToString(id[:])+".rock"))
}

// restore imports every saved rock into ln, records it in tr and removes its file; a state
// that cannot be imported is renamed to ID.rock.failed and reported.
func (s *stateDir) restore(ln *tcprocks.Listener, tr *rockTracker, log *slog.Logger) []*tcprocks.Conn {
	dir := filepath.Join(s.dir, "rocks")
	ents, err := os.ReadDir(dir)
	if err != nil {
		log.Warn("cannot read the saved rocks", "dir", dir, "err", err)
		return nil
	}
	var out []*tcprocks.Conn
	for _, e := range ents {
		if !e.Type().IsRegular() || !strings.HasSuffix(e.Name(), ".rock") {
			continue
		}
		path := filepath.Join(dir, e.Name())
		c, err := importRock(ln, path)
		if err != nil {
			log.Warn("cannot import a saved rock: its client will not resume", "file", path, "err", err)
			os.Rename(path, path+".failed")
			continue
		}
		os.Remove(path)
		tr.add(c)
		out = append(out, c)
	}
	return out
}

// importRock imports the rock saved at path.
func importRock(ln *tcprocks.Listener, path string) (*tcprocks.Conn, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	state, err := io.ReadAll(io.LimitReader(f, maxRockState+1))
	if err != nil {
		return nil, err
	}
	if len(state) > maxRockState {
		return nil, fmt.Errorf("more than the %d bytes a rock's state can have", maxRockState)
	}
	return ln.Import(state)
}

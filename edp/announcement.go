package edp

import (
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
)

// NewAnnouncement returns a fresh announcement: the magic prefix and random bytes.
func NewAnnouncement() []byte {
	a := make([]byte, AnnouncementLen)
	copy(a, magic[:])
	rand.Read(a[len(magic):]) // never fails (crypto/rand panics instead)
	return a
}

func checkAnnouncement(a []byte) error {
	if len(a) != AnnouncementLen {
		return fmt.Errorf("announcement of %d bytes, want %d", len(a), AnnouncementLen)
	}
	if !hasMagicPrefix(a) {
		return errors.New("announcement lacks the EDP magic prefix")
	}
	return nil
}

// WriteAnnouncement writes a fresh announcement to path (mode 0600, replaced
// atomically), for server processes that share one (LoadAnnouncement).
func WriteAnnouncement(path string) error {
	f, err := os.CreateTemp(filepath.Dir(path), ".edp-announcement-*")
	if err != nil {
		return fmt.Errorf("edp: write announcement: %w", err)
	}
	_, err = f.Write(NewAnnouncement())
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(f.Name(), path)
	}
	if err != nil {
		os.Remove(f.Name())
		return fmt.Errorf("edp: write announcement: %w", err)
	}
	return nil
}

// LoadAnnouncement reads an announcement written by WriteAnnouncement and checks its
// length and magic prefix. Use it as Config.Announcement of every server process that
// shares it.
func LoadAnnouncement(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("edp: load announcement: %w", err)
	}
	defer f.Close()
	a, err := io.ReadAll(io.LimitReader(f, AnnouncementLen+1))
	if err != nil {
		return nil, fmt.Errorf("edp: load announcement: %w", err)
	}
	if err := checkAnnouncement(a); err != nil {
		return nil, fmt.Errorf("edp: load %s: %w", path, err)
	}
	return a, nil
}

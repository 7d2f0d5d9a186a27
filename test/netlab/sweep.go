//go:build linux

package netlab

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Sweep removes what labs of killed processes left behind: their namespaces
// (after killing the processes inside) and their lock files. It returns the
// names of the namespaces it removed. A lab is live while its process holds
// the lock on /run/netlab/RUN.lock; the namespaces of live labs, in this
// process or another, are left alone. [New] calls Sweep.
func Sweep() ([]string, error) {
	entries, err := os.ReadDir("/run/netns")
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("netlab: %w", err)
	}
	runs := make(map[string][]string)
	for _, e := range entries {
		rest, ok := strings.CutPrefix(e.Name(), nsPrefix)
		if run, _, ok2 := strings.Cut(rest, "-"); ok && ok2 {
			runs[run] = append(runs[run], e.Name())
		}
	}
	var removed []string
	var errs []error
	for run, names := range runs {
		release, stale := staleRun(run, 0)
		if !stale {
			continue
		}
		for _, ns := range names {
			if err := removeNetns(ns); err != nil {
				errs = append(errs, err)
				continue
			}
			removed = append(removed, ns)
		}
		release()
	}
	// Lock files of runs killed before they made a namespace. A lab locks its
	// file at once, so an unlocked one older than a minute is stale.
	locks, _ := filepath.Glob(filepath.Join(lockDir, "*.lock"))
	for _, path := range locks {
		run := strings.TrimSuffix(filepath.Base(path), ".lock")
		if _, seen := runs[run]; seen {
			continue
		}
		if release, stale := staleRun(run, time.Minute); stale {
			release()
		}
	}
	slices.Sort(removed)
	return removed, errors.Join(errs...)
}

// staleRun reports whether run's owner is gone: its lock file is missing, or
// older than minAge and not locked. A stale run's lock is held until
// release, which deletes the file.
func staleRun(run string, minAge time.Duration) (release func(), stale bool) {
	path := filepath.Join(lockDir, run+".lock")
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if errors.Is(err, fs.ErrNotExist) {
		return func() {}, true
	}
	if err != nil {
		return nil, false
	}
	if fi, err := f.Stat(); err != nil || time.Since(fi.ModTime()) < minAge {
		f.Close()
		return nil, false
	}
	if unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB) != nil {
		f.Close()
		return nil, false
	}
	return func() {
		os.Remove(path)
		f.Close()
	}, true
}

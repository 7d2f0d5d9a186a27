package main

import (
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"

	"github.com/spf13/cobra"
)

// pskLen is the length of a generated pre-shared key: 256 bits.
const pskLen = 32

func newKeygenCmd() *cobra.Command {
	var (
		out   string
		force bool
	)
	c := &cobra.Command{
		Use:   "keygen",
		Short: "Write a random pre-shared key for rocks (file mode 0600)",
		Long: `keygen makes a random 256-bit pre-shared key, base64-encoded on one line. Give the
same file to both ends (--psk-file): the key is mixed into every rock's key schedule.
It is a secret: the file is created with mode 0600, and keygen never overwrites an
existing file unless --force is given. Without -o the key goes to standard output.`,
		Example: "  rockudp keygen -o rockudp.psk",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			key := make([]byte, pskLen)
			if _, err := rand.Read(key); err != nil {
				return err
			}
			line := base64.StdEncoding.EncodeToString(key) + "\n"
			if out == "" || out == "-" {
				_, err := fmt.Fprint(cmd.OutOrStdout(), line)
				return err
			}
			flags := os.O_WRONLY | os.O_CREATE | os.O_EXCL
			if force {
				flags = os.O_WRONLY | os.O_CREATE | os.O_TRUNC
			}
			f, err := os.OpenFile(out, flags, 0o600)
			if errors.Is(err, fs.ErrExist) {
				return fmt.Errorf("%s exists; use --force to replace it", out)
			}
			if err != nil {
				return err
			}
			if err := f.Chmod(0o600); err != nil { // an existing file replaced with --force
				f.Close()
				return err
			}
			if _, err := f.WriteString(line); err != nil {
				f.Close()
				return err
			}
			if err := f.Close(); err != nil {
				return err
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "wrote a %d-bit pre-shared key to %s (mode 0600)\n", pskLen*8, out)
			return nil
		},
	}
	c.Flags().StringVarP(&out, "output", "o", "", "file to write (default: standard output)")
	c.Flags().BoolVar(&force, "force", false, "replace an existing file")
	return c
}

// loadPSK reads a key file written by keygen: one line of base64, at least 128 bits.
func loadPSK(path string) ([]byte, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("pre-shared key: %w", err)
	}
	if st.Size() > 4096 {
		return nil, fmt.Errorf("pre-shared key %s: %d bytes is too large for a key file (make one with rockudp keygen)", path, st.Size())
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("pre-shared key: %w", err)
	}
	key, err := base64.StdEncoding.DecodeString(strings.TrimSpace(string(b)))
	if err != nil {
		return nil, fmt.Errorf("pre-shared key %s: not a base64 key (make one with rockudp keygen): %v", path, err)
	}
	if len(key) < 16 {
		return nil, fmt.Errorf("pre-shared key %s: %d bits is too short, want at least 128", path, len(key)*8)
	}
	return key, nil
}

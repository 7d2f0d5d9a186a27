package main

import (
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io/fs"
	"os"

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

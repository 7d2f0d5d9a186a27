package netlab

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// Row is one scenario's measurements. Zero fields are shown as empty in the
// Markdown table.
type Row struct {
	Scenario      string
	Detection     time.Duration // from the fault until an end noticed it
	Recovery      time.Duration // from the fault until data flowed again
	BytesReplayed int64         // bytes sent again after recovery
	BytesVerified int64         // bytes the receiver checked against what was sent
	Notes         string
}

// Report collects rows and, when the test ends, writes them to the report
// directory (see [ReportDir]) as NAME.json and NAME.md, and logs where. Its
// methods are safe for concurrent use.
type Report struct {
	name string
	mu   sync.Mutex
	rows []Row
}

// NewReport returns an empty report called name (characters other than
// letters, digits, '.', '-' and '_' become '_' in file names), written when
// tb ends if it has rows.
func NewReport(tb testing.TB, name string) *Report {
	r := &Report{name: fileName.ReplaceAllString(name, "_")}
	tb.Cleanup(func() {
		if len(r.Rows()) == 0 {
			return
		}
		files, err := r.Write(ReportDir())
		if err != nil {
			tb.Errorf("%v", err)
			return
		}
		tb.Logf("netlab: report written to %s", strings.Join(files, " and "))
	})
	return r
}

var fileName = regexp.MustCompile(`[^a-zA-Z0-9._-]+`)

// ReportDir returns $NETLAB_REPORT_DIR, or rockudp-netlab in the temporary
// directory if it is not set.
func ReportDir() string {
	if d := os.Getenv("NETLAB_REPORT_DIR"); d != "" {
		return d
	}
	return filepath.Join(os.TempDir(), "rockudp-netlab")
}

// Add appends a row.
func (r *Report) Add(row Row) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.rows = append(r.rows, row)
}

// Rows returns a copy of the rows, in the order they were added.
func (r *Report) Rows() []Row {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.rows)
}

// jsonRow is a Row as written to NAME.json: durations in milliseconds.
type jsonRow struct {
	Scenario      string  `json:"scenario"`
	DetectionMS   float64 `json:"detection_ms"`
	RecoveryMS    float64 `json:"recovery_ms"`
	BytesReplayed int64   `json:"bytes_replayed"`
	BytesVerified int64   `json:"bytes_verified"`
	Notes         string  `json:"notes,omitempty"`
}

// Write writes NAME.json and NAME.md into dir, creating it if needed, and
// returns their paths. Each file is replaced whole (write, then rename).
func (r *Report) Write(dir string) ([]string, error) {
	rows := r.Rows()
	doc := struct {
		Name string    `json:"name"`
		Rows []jsonRow `json:"rows"`
	}{Name: r.name, Rows: []jsonRow{}}
	var md strings.Builder
	fmt.Fprintf(&md, "# %s\n\n| scenario | detection (ms) | recovery (ms) | bytes replayed | bytes verified | notes |\n|---|---:|---:|---:|---:|---|\n", r.name)
	for _, row := range rows {
		doc.Rows = append(doc.Rows, jsonRow{row.Scenario, ms(row.Detection), ms(row.Recovery), row.BytesReplayed, row.BytesVerified, row.Notes})
		fmt.Fprintf(&md, "| %s | %s | %s | %s | %s | %s |\n", cell(row.Scenario),
			number(ms(row.Detection), "%.1f"), number(ms(row.Recovery), "%.1f"),
			number(row.BytesReplayed, "%d"), number(row.BytesVerified, "%d"), cell(row.Notes))
	}
	js, err := json.MarshalIndent(doc, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("netlab: report: %w", err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("netlab: report: %w", err)
	}
	var files []string
	for _, f := range []struct {
		ext  string
		data []byte
	}{{".json", append(js, '\n')}, {".md", []byte(md.String())}} {
		path := filepath.Join(dir, r.name+f.ext)
		if err := writeFileAtomic(path, f.data); err != nil {
			return files, fmt.Errorf("netlab: report: %w", err)
		}
		files = append(files, path)
	}
	return files, nil
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// number formats v, or returns "" for zero.
func number[T int64 | float64](v T, format string) string {
	if v == 0 {
		return ""
	}
	return fmt.Sprintf(format, v)
}

// cell makes s safe inside a Markdown table cell.
func cell(s string) string {
	return strings.NewReplacer("|", `\|`, "\n", " ").Replace(s)
}

func writeFileAtomic(path string, data []byte) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	_, err = tmp.Write(data)
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Chmod(tmp.Name(), 0o644)
	}
	if err == nil {
		err = os.Rename(tmp.Name(), path)
	}
	if err != nil {
		os.Remove(tmp.Name())
	}
	return err
}

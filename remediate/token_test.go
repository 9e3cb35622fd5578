package remediate_test

import (
	"crypto/sha256"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kms-exporter/kms_exporter/remediate"
)

func TestReadToken(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		name, content string
		mode          os.FileMode
		err, warning  string
	}{
		{"one line", "s3cret\n", 0o600, "", ""},
		{"surrounding space and empty lines", "\n  s3cret \r\n\n", 0o400, "", ""},
		{"empty", " \n\r\n", 0o600, "is empty", ""},
		{"two lines", "s3cret\nother\n", 0o600, "has 2 non-empty lines", ""},
		{"readable by group", "s3cret", 0o640, "", "may be read by group or others (mode 0640)"},
		{"readable by others (a Kubernetes secret volume)", "s3cret\n", 0o644, "", "(mode 0644)"},
		{"readable by others only", "s3cret", 0o604, "", "(mode 0604)"},
		{"writable by group", "s3cret", 0o620, "", ""},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(dir, string(rune('a'+i)))
			if err := os.WriteFile(path, []byte(tt.content), 0o600); err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod(path, tt.mode); err != nil {
				t.Fatal(err)
			}
			hash, warning, err := remediate.ReadToken(path)
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) || !strings.Contains(err.Error(), path) {
					t.Errorf("error %v, want one naming %s and saying %q", err, path, tt.err)
				}
				return
			}
			if err != nil || hash != sha256.Sum256([]byte("s3cret")) {
				t.Errorf("%v: the token is not s3cret", err)
			}
			if (tt.warning == "") != (warning == "") || !strings.Contains(warning, tt.warning) {
				t.Errorf("warning %q, want %q", warning, tt.warning)
			}
		})
	}
	if _, _, err := remediate.ReadToken(filepath.Join(dir, "missing")); err == nil {
		t.Error("a missing file: no error")
	}
}

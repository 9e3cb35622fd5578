package fastkms

import (
	"os"
	"path/filepath"
	"testing"
)

// DebianAWSCLI makes harness.AWSCLI, for the rest of the test, run Debian's
// AWS CLI (/usr/bin/aws, package awscli), whatever else comes first in PATH
// (a pyenv shim, a pip-installed version 1): harness.Tool looks "aws" up in
// PATH.
func DebianAWSCLI(t testing.TB) {
	t.Helper()
	dir := t.TempDir()
	if err := os.Symlink("/usr/bin/aws", filepath.Join(dir, "aws")); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", dir+string(os.PathListSeparator)+os.Getenv("PATH"))
}

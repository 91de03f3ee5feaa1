package ship

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"
)

// Credentials the test server is started with.
const (
	testS3Access = "sqlfs-test-access"
	testS3Secret = "sqlfs-test-secret"
)

// startS3 starts a versitygw S3 server ($SQLFS_VERSITYGW, installed by
// scripts/test.sh) on a free port of 127.0.0.1, serving a fresh directory,
// and creates one bucket. It points the AWS environment of the test at the
// server's credentials (not its endpoint: callers pass that in the URL) and
// stops the server when the test ends. Without a binary the test is skipped,
// or fails under CI=true.
func startS3(t *testing.T) (endpoint, bucket string) {
	t.Helper()
	bin := os.Getenv("SQLFS_VERSITYGW")
	if bin == "" {
		if os.Getenv("CI") == "true" {
			t.Fatal("SQLFS_VERSITYGW is not set (scripts/test.sh installs versitygw and sets it)")
		}
		t.Skip("SQLFS_VERSITYGW is not set; run scripts/test.sh for the S3 tests")
	}
	dir := t.TempDir()
	// The port is free now; another process could take it before versitygw
	// binds it, which shows up as the server exiting early.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()

	var out bytes.Buffer
	cmd := exec.Command(bin, "--access", testS3Access, "--secret", testS3Secret, "--port", addr, "posix", dir)
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting versitygw: %v", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		cmd.Process.Kill() // our own child, by its PID
		<-exited
	})

	endpoint = "http://" + addr
	deadline := time.Now().Add(15 * time.Second)
	for {
		resp, err := http.Get(endpoint + "/")
		if err == nil {
			resp.Body.Close()
			break // any HTTP answer (403 without a signature) means it serves
		}
		select {
		case err := <-exited:
			t.Fatalf("versitygw exited before serving (%v):\n%s", err, out.String())
		case <-time.After(10 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("versitygw did not answer on %s within 15 s:\n%s", addr, out.String())
		}
	}

	// The test's AWS configuration: the server's credentials, and nothing
	// from the machine's ~/.aws or environment that could point elsewhere.
	t.Setenv("AWS_ACCESS_KEY_ID", testS3Access)
	t.Setenv("AWS_SECRET_ACCESS_KEY", testS3Secret)
	t.Setenv("AWS_REGION", "us-east-1")
	t.Setenv("AWS_CONFIG_FILE", filepath.Join(dir, "no-aws-config"))
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", filepath.Join(dir, "no-aws-credentials"))
	for _, k := range []string{"AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"} {
		unsetenv(t, k)
	}

	bucket = "sqlfs-test"
	client := s3.New(s3.Options{
		Region:       "us-east-1",
		BaseEndpoint: aws.String(endpoint),
		UsePathStyle: true,
		Credentials:  credentials.NewStaticCredentialsProvider(testS3Access, testS3Secret, ""),
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := client.CreateBucket(ctx, &s3.CreateBucketInput{Bucket: aws.String(bucket)}); err != nil {
		t.Fatalf("creating bucket %s: %v\n%s", bucket, err, out.String())
	}
	return endpoint, bucket
}

// unsetenv removes an environment variable for the rest of the test.
func unsetenv(t *testing.T, key string) {
	t.Helper()
	t.Setenv(key, "") // registers the restore
	os.Unsetenv(key)
}

// s3URL is the replica URL of prefix in the test server's bucket.
func s3URL(endpoint, bucket, prefix string) string {
	return fmt.Sprintf("s3://%s/%s?endpoint=%s", bucket, prefix, url.QueryEscape(endpoint))
}

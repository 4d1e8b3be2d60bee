package blob

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
	"github.com/versity/versitygw/backend/meta"
	"github.com/versity/versitygw/backend/posix"
	"github.com/versity/versitygw/embedgw"
	"github.com/versity/versitygw/s3api"

	"github.com/myelin-chat/myelin/internal/config"
)

const (
	testAccessKey = "myelin-test"
	testSecretKey = "myelin-test-secret"
	testRegion    = "us-east-1"
)

// s3Server is a real S3 server (versitygw over a temporary directory) running in
// this process for one test.
type s3Server struct {
	endpoint string
	// client is an admin client for setting up buckets.
	client *minio.Client
}

// config returns the configuration of a store in bucket, under prefix.
func (s *s3Server) config(bucket, prefix string) config.S3 {
	return config.S3{
		Endpoint:        s.endpoint,
		Region:          testRegion,
		Bucket:          bucket,
		Prefix:          prefix,
		AccessKeyID:     testAccessKey,
		SecretAccessKey: testSecretKey,
		PathStyle:       true,
	}
}

// startS3 starts versitygw's S3 gateway with its POSIX backend on a loopback port and
// stops it when t ends. Only one can run at a time in a process (versitygw keeps some
// state in globals), so tests using it must not be parallel.
func startS3(t *testing.T) *s3Server {
	t.Helper()
	root := t.TempDir()
	data, sidecar := filepath.Join(root, "data"), filepath.Join(root, "meta")
	for _, d := range []string{data, sidecar} {
		if err := os.Mkdir(d, 0o750); err != nil {
			t.Fatal(err)
		}
	}
	// posix.New changes the process's working directory to data and resolves bucket
	// paths against it from then on; t.Chdir first makes the test restore it at the end.
	t.Chdir(data)
	// Sidecar metadata keeps the test independent of xattr support in the temporary
	// directory's filesystem.
	ms, err := meta.NewSideCar(sidecar)
	if err != nil {
		t.Fatalf("versitygw sidecar metadata: %v", err)
	}
	be, err := posix.New(data, ms, posix.PosixOpts{SideCarDir: sidecar})
	if err != nil {
		t.Fatalf("versitygw posix backend: %v", err)
	}

	// embedgw takes addresses, not listeners, so find a free port and hand it over;
	// another process could take it in between, so a failed start is retried.
	var (
		addr string
		done chan error
		stop context.CancelFunc
	)
	for attempt := 0; ; attempt++ {
		addr = freeAddr(t)
		ctx, cancel := context.WithCancel(context.Background())
		ready := make(chan struct{})
		done = make(chan error, 1)
		cfg := &embedgw.Config{
			RootUserAccess:    testAccessKey,
			RootUserSecret:    testSecretKey,
			Region:            testRegion,
			Ports:             []string{addr},
			MaxConnections:    64,
			MaxRequests:       64,
			MultipartMaxParts: 10000,
			Quiet:             true,
			S3Options:         []s3api.Option{s3api.WithOnListen(func() { close(ready) })},
		}
		go func() { done <- embedgw.RunVersityGW(ctx, be, cfg) }()
		select {
		case <-ready:
			stop = cancel
		case err := <-done:
			cancel()
			if attempt < 3 {
				t.Logf("starting versitygw on %s: %v; retrying", addr, err)
				continue
			}
			t.Fatalf("starting versitygw: %v", err)
		case <-time.After(30 * time.Second):
			cancel()
			t.Fatalf("versitygw did not start listening on %s", addr)
		}
		break
	}
	t.Cleanup(func() {
		stop()
		if err := <-done; err != nil && !errors.Is(err, context.Canceled) {
			t.Errorf("versitygw: %v", err)
		}
		be.Shutdown()
	})

	client, err := minio.New(addr, &minio.Options{
		Creds:        credentials.NewStaticV4(testAccessKey, testSecretKey, ""),
		Region:       testRegion,
		BucketLookup: minio.BucketLookupPath,
	})
	if err != nil {
		t.Fatalf("minio client: %v", err)
	}
	return &s3Server{endpoint: addr, client: client}
}

// freeAddr returns a loopback address with a port that was free a moment ago.
func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("finding a free port: %v", err)
	}
	defer l.Close()
	return l.Addr().String()
}

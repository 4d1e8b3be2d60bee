package benchserver

import (
	"os"
	"testing"
	"time"
)

func TestPercentiles(t *testing.T) {
	ds := []time.Duration{5, 1, 4, 2, 3, 10, 9, 8, 7, 6}
	for _, tc := range []struct {
		p    float64
		want time.Duration
	}{{50, 5}, {90, 9}, {99, 10}, {100, 10}, {0, 1}, {10, 1}, {11, 2}} {
		if got := Percentiles(ds, tc.p)[0]; got != tc.want {
			t.Errorf("p%v: got %v; want %v", tc.p, got, tc.want)
		}
	}
	if got := Percentiles(nil, 50)[0]; got != 0 {
		t.Errorf("p50 of nothing: got %v; want 0", got)
	}
}

func TestProcessCPU(t *testing.T) {
	if _, err := os.Stat("/proc/self/stat"); err != nil {
		t.Skip("no /proc")
	}
	if _, err := ProcessCPU(os.Getpid()); err != nil {
		t.Fatalf("ProcessCPU of this process: %v", err)
	}
	if _, err := ProcessCPU(-1); err == nil {
		t.Fatal("ProcessCPU(-1): got no error")
	}
}

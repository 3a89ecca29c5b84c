package apiclient

import (
	"context"
	"net"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// serve starts a gRPC server with the health service on loopback.
func serve(t *testing.T) (string, *grpc.Server) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := grpc.NewServer()
	healthpb.RegisterHealthServer(s, health.NewServer())
	go s.Serve(l)
	t.Cleanup(s.Stop)
	return l.Addr().String(), s
}

func deadAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	a := l.Addr().String()
	l.Close()
	return a
}

func check(t *testing.T, conn *grpc.ClientConn) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{}, grpc.WaitForReady(true))
	return err
}

// A list whose first replica is down reaches the next; when the replica
// in use stops, calls move to one that still answers.
func TestDialFailsOverBetweenReplicas(t *testing.T) {
	a, sa := serve(t)
	b, _ := serve(t)
	conn, err := Dial(deadAddr(t) + "," + a + ", " + b)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if err := check(t, conn); err != nil {
		t.Fatalf("with the first replica down: %v", err)
	}
	sa.Stop()
	// A call already on the closing connection may fail; the next ones
	// go to the replica that answers.
	err = check(t, conn)
	for i := 0; err != nil && i < 2; i++ {
		err = check(t, conn)
	}
	if err != nil {
		t.Fatalf("after the replica in use stopped: %v", err)
	}
}

func TestAddressesRefusesEmptyEntries(t *testing.T) {
	for _, bad := range []string{"", "a:1,", ",a:1", "a:1,,b:2"} {
		if _, err := Addresses(bad); err == nil {
			t.Errorf("Addresses(%q) accepted an empty entry", bad)
		}
	}
	got, err := Addresses("a:1, b:2")
	if err != nil || len(got) != 2 || got[1] != "b:2" {
		t.Errorf("Addresses(a:1, b:2) = %v, %v", got, err)
	}
}

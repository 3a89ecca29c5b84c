package allreduce

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"

	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
)

// TLSSecurity secures a ring with mutual TLS: every worker presents cert,
// peers are verified against roots, and identify names the worker a
// verified certificate belongs to (an error refuses it: a certificate of
// another kind of identity).
func TLSSecurity(cert tls.Certificate, roots *x509.CertPool, identify func(*x509.Certificate) (string, error)) *Security {
	check := func(cs tls.ConnectionState, server bool) (string, error) {
		if len(cs.PeerCertificates) == 0 {
			return "", errors.New("the ring peer sent no certificate")
		}
		leaf := cs.PeerCertificates[0]
		if !server {
			// The server side verified the chain (ClientCAs); the client
			// verifies it here, by identity rather than host name.
			inter := x509.NewCertPool()
			for _, c := range cs.PeerCertificates[1:] {
				inter.AddCert(c)
			}
			if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
				return "", fmt.Errorf("the ring peer's certificate is not from this cluster's CA: %w", err)
			}
		}
		return identify(leaf)
	}
	server := &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{cert},
		ClientCAs:    roots,
		ClientAuth:   tls.RequireAndVerifyClientCert,
		VerifyConnection: func(cs tls.ConnectionState) error {
			_, err := check(cs, true)
			return err
		},
	}
	return &Security{
		Server: credentials.NewTLS(server),
		Client: func(want string) credentials.TransportCredentials {
			return credentials.NewTLS(&tls.Config{
				MinVersion:         tls.VersionTLS13,
				Certificates:       []tls.Certificate{cert},
				RootCAs:            roots,
				InsecureSkipVerify: true, // verified in VerifyConnection
				VerifyConnection: func(cs tls.ConnectionState) error {
					got, err := check(cs, false)
					if err == nil && got != want {
						err = fmt.Errorf("the ring peer is %q; the assignment names %q", got, want)
					}
					return err
				},
			})
		},
		Peer: func(ctx context.Context) (string, bool) {
			p, ok := peer.FromContext(ctx)
			if !ok {
				return "", false
			}
			ti, ok := p.AuthInfo.(credentials.TLSInfo)
			if !ok || len(ti.State.PeerCertificates) == 0 {
				return "", false
			}
			name, err := identify(ti.State.PeerCertificates[0])
			return name, err == nil
		},
	}
}

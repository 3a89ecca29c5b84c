package worker

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	pb "github.com/ringmaster/ringmaster/api/ringmaster/v1"
	"github.com/ringmaster/ringmaster/internal/apiclient"
	"github.com/ringmaster/ringmaster/internal/pki"
	"github.com/ringmaster/ringmaster/pkg/allreduce"
)

// JoinTokenEnv names the environment variable a join token may come in
// (a Kubernetes Secret, `coordinator run`'s workers).
const JoinTokenEnv = "RINGMASTER_JOIN_TOKEN"

// credential finds the worker's credential: the file given, the one kept
// in StateDir from an earlier join, or a new one traded for the join
// token. It returns nil with Insecure.
func (w *Worker) credential(ctx context.Context) (*pki.Credential, error) {
	if w.cfg.Insecure {
		w.log.Warn("--insecure: this worker talks to the coordinator, etcd, NATS and its ring peers in plain text, without authentication")
		return nil, nil
	}
	if w.cfg.Credentials != "" {
		cred, err := pki.LoadCredential(w.cfg.Credentials)
		if err != nil {
			return nil, fmt.Errorf("worker: --credentials: %w", err)
		}
		if cred.Role != pki.RoleWorker || cred.Name != w.cfg.ID {
			return nil, fmt.Errorf("worker: --credentials %s is %s; this worker is worker:%s (give --id %s, or the worker's own credential)", w.cfg.Credentials, cred.Identity, w.cfg.ID, cred.Name)
		}
		return cred, nil
	}
	token := w.cfg.JoinToken
	kept := filepath.Join(w.cfg.StateDir, w.cfg.ID+".credentials")
	if cred, err := pki.LoadCredential(kept); err == nil {
		// A token for another CA means the cluster was made anew: join it.
		if tok, terr := pki.ParseToken(token); token == "" || terr != nil || tok.CAHash == "" || caHash(cred) == tok.CAHash {
			return cred, nil
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		w.log.Warn("the kept credential is unusable; joining anew", zap.String("path", kept), zap.Error(err))
	}
	if token == "" {
		return nil, fmt.Errorf("worker: the coordinator serves mutual TLS: give a join token (--join-token or $%s; `coordinator token create --role worker` prints one) or a credential (--credentials), or run both with --insecure", JoinTokenEnv)
	}
	tok, err := pki.ParseToken(token)
	if err != nil {
		return nil, fmt.Errorf("worker: --join-token: %w", err)
	}
	if w.cfg.CAFile != "" {
		b, err := os.ReadFile(w.cfg.CAFile)
		if err != nil {
			return nil, fmt.Errorf("worker: --ca-file: %w", err)
		}
		ca, err := pki.ParseCertPEM(b)
		if err != nil {
			return nil, fmt.Errorf("worker: --ca-file %s: %w", w.cfg.CAFile, err)
		}
		if tok.CAHash != "" && tok.CAHash != pki.CertHash(ca) {
			return nil, fmt.Errorf("worker: --ca-file %s is not the CA the join token names", w.cfg.CAFile)
		}
		tok.CAHash = pki.CertHash(ca)
	}
	if tok.CAHash == "" {
		return nil, errors.New("worker: the join token has no CA hash (ID.SECRET): give the cluster's CA certificate with --ca-file")
	}
	cred, err := w.join(ctx, tok)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(w.cfg.StateDir, 0o700); err != nil {
		return nil, fmt.Errorf("worker: --state-dir: %w", err)
	}
	if err := cred.Write(kept); err != nil {
		return nil, fmt.Errorf("worker: keeping the credential: %w", err)
	}
	w.log.Info("joined the cluster", zap.String("credential", kept))
	return cred, nil
}

func caHash(c *pki.Credential) string {
	ca, err := pki.ParseCertPEM([]byte(c.CA))
	if err != nil {
		return ""
	}
	return pki.CertHash(ca)
}

// join trades a token for a certificate. The coordinator is trusted
// because the CA its certificate chain carries has the token's hash.
func (w *Worker) join(ctx context.Context, tok pki.Token) (*pki.Credential, error) {
	key, csr, err := pki.NewCSR()
	if err != nil {
		return nil, err
	}
	pinned := pki.TokenPinnedTLS(tok.CAHash, pki.HasRole(pki.RoleCoordinator))
	conn, err := apiclient.Dial(w.cfg.Coordinator, grpc.WithTransportCredentials(credentials.NewTLS(pinned)))
	if err != nil {
		return nil, fmt.Errorf("worker: %w", err)
	}
	defer conn.Close()
	cli := pb.NewCoordinatorClient(conn)
	var resp *pb.JoinResponse
	for backoff := 200 * time.Millisecond; ; backoff = min(2*backoff, 5*time.Second) {
		cctx, cancel := context.WithTimeout(ctx, w.cfg.RequestTimeout)
		resp, err = cli.Join(cctx, &pb.JoinRequest{TokenId: tok.ID, TokenSecret: tok.Secret, WorkerId: w.cfg.ID, Csr: csr}, grpc.WaitForReady(true))
		cancel()
		if err == nil || !retryable(err) || ctx.Err() != nil {
			break
		}
		w.log.Info("coordinator not reachable yet; retrying the join", zap.Error(err))
		select {
		case <-ctx.Done():
		case <-time.After(backoff):
		}
	}
	if err != nil {
		return nil, fmt.Errorf("worker: joining with token %s: %w", tok.ID, err)
	}
	keyPEM, err := pki.EncodeKey(key)
	if err != nil {
		return nil, err
	}
	cred := &pki.Credential{Identity: pki.Identity{Role: pki.RoleWorker, Name: w.cfg.ID}, CA: resp.CaPem, Cert: resp.CertPem, Key: string(keyPEM)}
	if _, err := cred.TLSCertificate(); err != nil {
		return nil, fmt.Errorf("worker: the certificate the coordinator signed: %w", err)
	}
	if caHash(cred) != tok.CAHash {
		return nil, errors.New("worker: the coordinator answered with a CA other than the join token's")
	}
	return cred, nil
}

// ringSecurity makes the ring mutual TLS between workers: each end proves
// its worker identity, and the hub checks it against the generation's
// assignment.
func ringSecurity(cred *pki.Credential) (*allreduce.Security, error) {
	pair, err := cred.TLSCertificate()
	if err != nil {
		return nil, err
	}
	pool, err := cred.Pool()
	if err != nil {
		return nil, err
	}
	return allreduce.TLSSecurity(pair, pool, pki.WorkerName), nil
}

// retryable tells a coordinator that is not reachable yet from a refusal.
func retryable(err error) bool {
	c := status.Code(err)
	return c == codes.Unavailable || c == codes.DeadlineExceeded
}

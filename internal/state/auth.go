package state

import (
	"context"
	"errors"
	"fmt"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// etcd access control. With client-certificate authentication etcd takes
// the user name from the certificate's common name ("role:name", see
// internal/pki), so each identity that talks to etcd is an etcd user
// without a password:
//
//   - root (required by etcd to enable auth; no certificate is named so)
//     and the coordinators' identity, both with the root role;
//   - the role WorkerRole, shared by every worker: read the cluster's keys,
//     write under jobs/ and progress/ (progress, results, reports);
//   - per worker, a role of its own that may write only its registration,
//     workers/ID: no worker can register under another's id.
//
// The auth prefix (tokens) lies outside the cluster's prefix, so workers
// cannot read it.

// WorkerRole is the etcd role every worker user holds.
const WorkerRole = "ringmaster-worker"

// AuthPrefix is where join tokens live: beside the cluster's prefix, not
// under it.
func (k Keys) AuthPrefix() string {
	p := k.Prefix
	if len(p) > 0 && p[len(p)-1] == '/' {
		p = p[:len(p)-1]
	}
	return p + "-auth/"
}

// Token is a join token's key.
func (k Keys) Token(id string) string { return k.AuthPrefix() + "tokens/" + id }

// EnableAuth turns on etcd's authentication if it is off, making the
// users and roles above; coordinator is the coordinators' etcd user. It is
// idempotent and safe to run from several replicas at once.
func EnableAuth(ctx context.Context, cli *clientv3.Client, k Keys, coordinator string) error {
	st, err := cli.AuthStatus(ctx)
	if err != nil {
		return fmt.Errorf("etcd auth status: %w", err)
	}
	if st.Enabled {
		return nil
	}
	for _, user := range []string{"root", coordinator} {
		if _, err := cli.UserAddWithOptions(ctx, user, "", &clientv3.UserAddOptions{NoPassword: true}); err != nil && !errors.Is(err, rpctypes.ErrUserAlreadyExist) {
			return fmt.Errorf("etcd user %s: %w", user, err)
		}
		if _, err := cli.UserGrantRole(ctx, user, "root"); err != nil {
			return fmt.Errorf("etcd user %s: %w", user, err)
		}
	}
	if err := ensureRole(ctx, cli, WorkerRole, []perm{
		{k.Prefix, clientv3.GetPrefixRangeEnd(k.Prefix), clientv3.PermissionType(clientv3.PermRead)},
		{k.Jobs(), clientv3.GetPrefixRangeEnd(k.Jobs()), clientv3.PermissionType(clientv3.PermReadWrite)},
		{k.Progresses(), clientv3.GetPrefixRangeEnd(k.Progresses()), clientv3.PermissionType(clientv3.PermReadWrite)},
	}); err != nil {
		return err
	}
	if _, err := cli.AuthEnable(ctx); err != nil && !errors.Is(err, rpctypes.ErrAuthNotEnabled) {
		if st, serr := cli.AuthStatus(ctx); serr == nil && st.Enabled {
			return nil // another replica enabled it
		}
		return fmt.Errorf("enabling etcd auth: %w", err)
	}
	return nil
}

type perm struct {
	key, end string
	typ      clientv3.PermissionType
}

func ensureRole(ctx context.Context, cli *clientv3.Client, role string, perms []perm) error {
	if _, err := cli.RoleAdd(ctx, role); err != nil && !errors.Is(err, rpctypes.ErrRoleAlreadyExist) {
		return fmt.Errorf("etcd role %s: %w", role, err)
	}
	for _, p := range perms {
		if _, err := cli.RoleGrantPermission(ctx, role, p.key, p.end, p.typ); err != nil {
			return fmt.Errorf("etcd role %s: %w", role, err)
		}
	}
	return nil
}

// WorkerUser is a worker's etcd user (its certificate's common name).
func WorkerUser(id string) string { return "worker:" + id }

// EnsureWorkerUser makes the etcd user of worker id (if missing): the
// shared worker role and a role that may write its registration only.
func EnsureWorkerUser(ctx context.Context, cli *clientv3.Client, k Keys, id string) error {
	user := WorkerUser(id)
	if err := ensureRole(ctx, cli, user, []perm{{k.Worker(id), "", clientv3.PermissionType(clientv3.PermReadWrite)}}); err != nil {
		return err
	}
	if _, err := cli.UserAddWithOptions(ctx, user, "", &clientv3.UserAddOptions{NoPassword: true}); err != nil && !errors.Is(err, rpctypes.ErrUserAlreadyExist) {
		return fmt.Errorf("etcd user %s: %w", user, err)
	}
	for _, role := range []string{WorkerRole, user} {
		if _, err := cli.UserGrantRole(ctx, user, role); err != nil {
			return fmt.Errorf("etcd user %s: %w", user, err)
		}
	}
	return nil
}

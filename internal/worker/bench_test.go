package worker

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"

	pb "github.com/ringmaster/ringmaster/api/ringmaster/v1"
	"github.com/ringmaster/ringmaster/pkg/model"
)

// BenchmarkCNNStepOverlap times a training step of the CNN on 2 ranks over
// gRPC on loopback (batch 64 per rank), with the gradient all-reduced after
// the backward pass (bucket=0) or in buckets overlapping it. ms/step is the
// figure; each rank's backend uses one core. world=1 is the bound: the
// same step on one rank, with no communication at all.
//
//	go test ./internal/worker -run '^$' -bench CNNStepOverlap -benchtime 60x
func BenchmarkCNNStepOverlap(b *testing.B) {
	ds := loadMNIST(b)
	for _, c := range []struct {
		world  int
		bucket int64
	}{{1, 0}, {2, 0}, {2, 256 << 10}, {2, 1 << 20}} {
		b.Run(fmt.Sprintf("world=%d/bucket=%d", c.world, c.bucket), func(b *testing.B) {
			world, bucket := c.world, c.bucket
			spec := testSpec(world, 64, int64(b.N)+5)
			spec.Collective = &pb.Collective{BucketBytes: bucket}
			comms := ringOverGRPC(b, world, 1)
			var start time.Time
			var wg sync.WaitGroup
			for r := range world {
				wg.Add(1)
				go func() {
					defer wg.Done()
					tr := &Trainer{JobID: "b", Spec: spec, Rank: r, World: world, Generation: 1, Comm: comms[r],
						Train: MNISTData(ds.Train), Backend: model.NewCPU(1), Reporter: newMemReporter(), Log: zap.NewNop(),
						StepHook: func(step int64, _ model.Model) {
							if r == 0 && step == 5 { // after warm-up
								b.ResetTimer()
								start = time.Now()
							}
						}}
					if _, err := tr.Run(context.Background()); err != nil {
						b.Error(err)
					}
				}()
			}
			wg.Wait()
			b.ReportMetric(float64(time.Since(start).Milliseconds())/float64(b.N), "ms/step")
		})
	}
}

package ship

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/superfly/ltx"
)

// ListerAfter is a Replica that can list the files of a level that start
// past a TXID without reading the ones before it (S3: ListObjectsV2 with
// StartAfter). Level 0 holds one file per commit for the whole level-0
// retention window; readers that need only its tail seek.
type ListerAfter interface {
	// LTXFilesAfter lists db's files at level whose MinTXID is > after,
	// ordered as LTXFiles orders them.
	LTXFilesAfter(ctx context.Context, db string, level int, after ltx.TXID) ([]*ltx.FileInfo, error)
}

// LTXFilesAfter lists db's files at level with MinTXID > after, seeking
// where r can and filtering a full listing where it cannot.
func LTXFilesAfter(ctx context.Context, r Replica, db string, level int, after ltx.TXID) ([]*ltx.FileInfo, error) {
	if la, ok := r.(ListerAfter); ok && after > 0 {
		return la.LTXFilesAfter(ctx, db, level, after)
	}
	infos, err := r.LTXFiles(ctx, db, level)
	if err != nil {
		return nil, err
	}
	i := 0
	for i < len(infos) && infos[i].MinTXID <= after {
		i++
	}
	return infos[i:], nil
}

var _ ListerAfter = (*S3Replica)(nil)

// LTXFilesAfter lists with StartAfter set past every key whose MinTXID is
// <= after: names are fixed-width hex, so they sort in TXID order.
func (r *S3Replica) LTXFilesAfter(ctx context.Context, db string, level int, after ltx.TXID) ([]*ltx.FileInfo, error) {
	return r.listLevelUpTo(ctx, db, level, after, 0)
}

// LTXFilesBetween stops paging once a page ends past upTo, so it costs one
// request for the first thousand files after after, however many follow; a
// server that does not list keys in order may then leave some out.
func (r *S3Replica) LTXFilesBetween(ctx context.Context, db string, level int, after, upTo ltx.TXID) ([]*ltx.FileInfo, error) {
	return r.listLevelUpTo(ctx, db, level, after, upTo)
}

// LTXFilesBetween lists db's files at level with after < MinTXID <= upTo:
// through the replica's own range listing where it has one (S3, a file
// replica, Local), else by filtering LTXFilesAfter.
func LTXFilesBetween(ctx context.Context, r Replica, db string, level int, after, upTo ltx.TXID) ([]*ltx.FileInfo, error) {
	var infos []*ltx.FileInfo
	var err error
	if lb, ok := r.(listerBetween); ok {
		infos, err = lb.LTXFilesBetween(ctx, db, level, after, upTo)
	} else {
		infos, err = LTXFilesAfter(ctx, r, db, level, after)
	}
	if err != nil {
		return nil, err
	}
	var out []*ltx.FileInfo // a new slice: infos may be the replica's own
	for _, fi := range infos {
		if fi.MinTXID <= upTo {
			out = append(out, fi)
		}
	}
	return out, nil
}

// listerBetween is a replica that lists the files of a level in a TXID
// range without looking at the others (S3: no page past the range;
// FileReplica, Local: no stat each).
type listerBetween interface {
	LTXFilesBetween(ctx context.Context, db string, level int, after, upTo ltx.TXID) ([]*ltx.FileInfo, error)
}

var (
	_ listerBetween = (*S3Replica)(nil)
	_ listerBetween = (*FileReplica)(nil)
	_ listerBetween = (*Local)(nil)
)

// listLevel lists a level's files with MinTXID > after, following
// pagination.
func (r *S3Replica) listLevel(ctx context.Context, db string, level int, after ltx.TXID) ([]*ltx.FileInfo, error) {
	return r.listLevelUpTo(ctx, db, level, after, 0)
}

// listLevelUpTo lists a level's files with MinTXID > after, following
// pagination until a page ends past upTo (0: to the end). CreatedAt is the
// object's LastModified, the time of the upload; the commit time is in the
// LTX header and the object metadata.
func (r *S3Replica) listLevelUpTo(ctx context.Context, db string, level int, after, upTo ltx.TXID) ([]*ltx.FileInfo, error) {
	lp := r.levelPrefix(db, level)
	in := &s3.ListObjectsV2Input{Bucket: aws.String(r.bucket), Prefix: aws.String(lp)}
	if after > 0 {
		in.StartAfter = aws.String(lp + fmt.Sprintf("%s-ffffffffffffffff.ltx", after))
	}
	var infos []*ltx.FileInfo
	p := s3.NewListObjectsV2Paginator(r.client, in)
	for more := true; more && p.HasMorePages(); {
		page, err := p.NextPage(ctx)
		if err != nil {
			return nil, r.wrap("list", lp, err)
		}
		for _, obj := range page.Contents {
			minTXID, maxTXID, err := ltx.ParseFilename(strings.TrimPrefix(aws.ToString(obj.Key), lp))
			if err != nil || minTXID <= after {
				continue // strangers, including anything deeper down
			}
			if upTo != 0 && minTXID > upTo {
				more = false // keys are in order: the next pages start later still
			}
			infos = append(infos, &ltx.FileInfo{
				Level: level, MinTXID: minTXID, MaxTXID: maxTXID,
				Size: aws.ToInt64(obj.Size), CreatedAt: aws.ToTime(obj.LastModified).UTC(),
			})
		}
	}
	// Fixed-width hex names list in TXID order already; servers that do
	// not sort keys exist, and this costs nothing.
	slices.SortFunc(infos, cmpInfo)
	return infos, nil
}

// Command demo runs kms_exporter against an embedded default: local-kms
// (pinned in tools/go.mod) seeded with a mixed sample inventory, behind the
// test proxy that adds what only AWS has (rotation periods and dates, an
// AWS-managed key, a multi-Region replica), with events on: moto's SQS and
// EventBridge, fed by the proxy as CloudTrail would be. `make demo` runs it.
package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"flag"
	"fmt"
	"log"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kms"

	"github.com/kms-exporter/kms_exporter/internal/eventstest"
	"github.com/kms-exporter/kms_exporter/internal/kmstest"
)

func main() {
	exporter := flag.String("exporter", "./kms_exporter", "the kms_exporter binary to run")
	listen := flag.String("listen", "127.0.0.1:10863", "address the exporter listens on")
	region := flag.String("region", "eu-west-1", "region of the emulated KMS")
	flag.Parse()
	log.SetFlags(0)
	log.SetPrefix("demo: ")

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	logPath := filepath.Join(os.TempDir(), "kms_exporter-demo-local-kms.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		log.Fatal(err)
	}
	defer logFile.Close()
	log.Printf("building and starting local-kms (its log: %s)", logPath)
	srv, err := kmstest.Start(kmstest.Options{Region: *region, Log: logFile})
	if err != nil {
		log.Fatal(err)
	}
	defer srv.Close()
	proxy := kmstest.StartProxy(srv.URL)
	defer proxy.Close()

	// Events on: moto's SQS and EventBridge with the queue and rule of
	// deploy/events, and the proxy doing what CloudTrail does in AWS: each
	// call that changes a key puts its event on the bus.
	log.Printf("starting moto (SQS, EventBridge) for the events")
	moto, err := kmstest.StartMotoServer()
	if err != nil {
		log.Fatalf("%v (make deps installs moto)", err)
	}
	defer moto.Close()
	bus, err := eventstest.Setup(ctx, moto, *region, 30)
	if err != nil {
		log.Fatal(err)
	}
	// Each rotation (on demand, or automatic when a next rotation date
	// passes) puts its KMS CMK Rotation event on the bus too.
	bus.Follow(proxy, kmstest.DefaultAccount, func(err error) { log.Print(err) })

	ids, err := kmstest.SeedMixed(ctx, srv.Client())
	if err != nil {
		log.Fatal(err)
	}
	c := kmstest.Client(proxy.URL, *region)
	long, err := c.CreateKey(ctx, &kms.CreateKeyInput{Description: aws.String("kms_exporter sample: rotates every two years")})
	if err == nil {
		_, err = c.EnableKeyRotation(ctx, &kms.EnableKeyRotationInput{KeyId: long.KeyMetadata.KeyId, RotationPeriodInDays: aws.Int32(730)})
	}
	if err == nil {
		_, err = c.CreateAlias(ctx, &kms.CreateAliasInput{AliasName: aws.String("alias/archive-two-year-rotation"), TargetKeyId: long.KeyMetadata.KeyId})
	}
	if err != nil {
		log.Fatal(err)
	}
	// Rotation history: the rotating sample key rotated on demand twice.
	for range 2 {
		if _, err := c.RotateKeyOnDemand(ctx, &kms.RotateKeyOnDemandInput{KeyId: aws.String(ids["payments"])}); err != nil {
			log.Fatal(err)
		}
	}
	proxy.AddFake(kmstest.AWSManagedKey(*region, kmstest.DefaultAccount, "7c1f5c7e-aaaa-4bbb-8ccc-0000000000a1", "s3"))
	proxy.AddFake(kmstest.MultiRegionKey(*region, "us-east-1", kmstest.DefaultAccount, "mrk-0d3mo0000000000000000000000000aa", false))

	fmt.Printf("\nSample inventory in account %s, region %s:\n", kmstest.DefaultAccount, *region)
	for _, k := range kmstest.MixedInventory {
		fmt.Printf("  %-34s %-38s expect %s (%s)\n", "alias/"+k.Name, ids[k.Name], k.Status, k.Reason)
	}
	fmt.Printf("  %-34s %-38s expect %s (%s)\n", "alias/archive-two-year-rotation", aws.ToString(long.KeyMetadata.KeyId), "noncompliant", "period_exceeds_policy")
	fmt.Printf("  %-34s %-38s expect %s (%s)\n", "alias/aws/s3", "(AWS-managed, from the proxy)", "not_applicable", "aws_managed")
	fmt.Printf("  %-34s %-38s expect %s (%s)\n", "(none)", "(multi-Region replica, from the proxy)", "noncompliant", "rotation_disabled")
	fmt.Printf("\nExporter: http://%s/  metrics: http://%s/metrics\n", *listen, *listen)
	fmt.Printf("Try:  curl -s http://%s/metrics | grep '^kms_key_compliance'\n", *listen)
	fmt.Printf("Rotation history (alias/payments rotated on demand twice):  curl -s http://%s/metrics | grep -E '^kms_key_(rotations|last_rotation)'\n", *listen)
	fmt.Printf("Evidence report: http://%s/report (CSV: http://%s/report?format=csv)\n", *listen, *listen)
	fmt.Printf("Change a key: its event reaches the exporter through EventBridge and SQS (moto), and /metrics shows it within a second\n"+
		"(every key is also re-read once an hour, --refresh.resync-interval; the keys are listed every 15s):\n"+
		"  AWS_ACCESS_KEY_ID=x AWS_SECRET_ACCESS_KEY=x aws --endpoint-url %s --region %s kms enable-key-rotation --key-id %s\n\n",
		proxy.URL, *region, ids["legacy-billing"])

	// Remediation on, with a token made for this run.
	secret := make([]byte, 16)
	if _, err := rand.Read(secret); err != nil {
		log.Fatal(err)
	}
	tokenFile := filepath.Join(os.TempDir(), "kms_exporter-demo-token")
	if err := os.WriteFile(tokenFile, []byte(hex.EncodeToString(secret)+"\n"), 0o600); err != nil {
		log.Fatal(err)
	}
	defer os.Remove(tokenFile)
	fmt.Printf("Remediation is enabled for the demo (token in %s). Dry run, then for real:\n", tokenFile)
	fmt.Printf("  curl -s -H \"Authorization: Bearer $(cat %s)\" -H 'Content-Type: application/json' \\\n", tokenFile)
	fmt.Printf("    -d '{\"region\":\"%s\",\"key_id\":\"%s\",\"dry_run\":true}' http://%s/api/v1/remediate\n", *region, ids["legacy-billing"], *listen)
	fmt.Printf("  (the same without \"dry_run\" to change the key). From the command line:\n")
	fmt.Printf("  AWS_ENDPOINT_URL_KMS=%s AWS_REGION=%s AWS_ACCESS_KEY_ID=x AWS_SECRET_ACCESS_KEY=x %s audit\n", proxy.URL, *region, *exporter)
	fmt.Printf("  AWS_ENDPOINT_URL_KMS=%s AWS_REGION=%s AWS_ACCESS_KEY_ID=x AWS_SECRET_ACCESS_KEY=x %s remediate --all-noncompliant --dry-run\n\n", proxy.URL, *region, *exporter)

	cmd := exec.CommandContext(ctx, *exporter, "--web.listen-address="+*listen, "--aws.region="+*region, "--refresh.interval=15s",
		"--refresh.resync-interval=1h", "--events.sqs-queue-url="+bus.QueueURL,
		"--remediation.enabled", "--remediation.token-file="+tokenFile, "--web.enable-report")
	cmd.Env = append(os.Environ(), "AWS_ENDPOINT_URL_KMS="+proxy.URL, "AWS_ENDPOINT_URL_SQS="+moto.URL, "AWS_REGION="+*region,
		"AWS_ACCESS_KEY_ID=demo", "AWS_SECRET_ACCESS_KEY=demo", "AWS_EC2_METADATA_DISABLED=true")
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	if err := cmd.Run(); err != nil && ctx.Err() == nil {
		log.Fatalf("kms_exporter: %v", err)
	}
}

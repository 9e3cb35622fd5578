#!/bin/sh
# Sets up, on the compose stack's moto, what deploy/events/cloudformation sets
# up in AWS: the queue kms-events with its dead-letter queue, and the
# EventBridge rule sending KMS events (the pattern of deploy/events) to it.
set -eu
# AWS_ENDPOINT_URL (moto) and AWS_DEFAULT_REGION come from the environment;
# the endpoint is passed explicitly for CLIs older than 2.13.
aws() { command aws --endpoint-url "$AWS_ENDPOINT_URL" "$@"; }
dlq=$(aws sqs create-queue --queue-name kms-events-dlq --query QueueUrl --output text)
dlq_arn=$(aws sqs get-queue-attributes --queue-url "$dlq" --attribute-names QueueArn --query Attributes.QueueArn --output text)
cat > /tmp/attributes.json <<JSON
{"VisibilityTimeout": "120", "RedrivePolicy": "{\"deadLetterTargetArn\":\"$dlq_arn\",\"maxReceiveCount\":\"5\"}"}
JSON
queue=$(aws sqs create-queue --queue-name kms-events --attributes file:///tmp/attributes.json --query QueueUrl --output text)
queue_arn=$(aws sqs get-queue-attributes --queue-url "$queue" --attribute-names QueueArn --query Attributes.QueueArn --output text)
aws events put-rule --name kms-exporter --event-pattern "file://${PATTERN:-/init/kms-event-pattern.json}" >/dev/null
aws events put-targets --rule kms-exporter --targets "Id=queue,Arn=$queue_arn" >/dev/null
echo "KMS events go to $queue"
